"""Fixtures for VMs on libvirt hosts: the hosts (see ``daemons``), a settings file naming
them, VM names no other test worker uses, and domains and volumes cleared after a test."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, Guest, Result
from tests.libvirt import daemons
from tests.libvirt.daemons import Host


@dataclass
class Hosts:
    a: Host  # this machine's libvirtd, qemu:///system
    a_ssh: Host  # the same libvirtd through qemu+ssh://
    b: Host | None  # an independent libvirtd through qemu+ssh://
    b_problem: str | None
    ssh: daemons.SSH
    base: Path


@pytest.fixture(scope="session")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    problem = daemons.missing()
    if problem:
        pytest.skip(problem)
    base = tmp_path_factory.mktemp("libvirt")
    ssh = daemons.SSH(base)
    a = daemons.host_a()
    a_ssh = daemons.ssh_to_a(ssh)
    b, b_problem = None, None
    try:
        b = daemons.host_b(ssh, base / "hostb")
    except (OSError, RuntimeError) as error:  # e.g. no mount namespaces in this container
        b_problem = f"host B (a second libvirtd) could not start: {error}"
    yield Hosts(a, a_ssh, b, b_problem, ssh, base)
    for host in (a_ssh, b):
        if host is not None:
            daemons.stop(host)


class LV:
    """One test's view: a CLI whose settings name the hosts, and names of its own."""

    def __init__(self, cli: CLI, hosts: Hosts, prefix: str, settings: Path) -> None:
        self.cli = cli
        self.hosts = hosts
        self.prefix = prefix
        self.settings = settings
        self.named: dict[str, Host] = {"a": hosts.a, "a-ssh": hosts.a_ssh}
        if hosts.b is not None:
            self.named["b"] = hosts.b
        self.write_settings()
        cli.env["CLAN_VM_CONFIG"] = str(settings)

    def write_settings(self) -> None:
        entries = {name: host.uri for name, host in self.named.items()}
        self.settings.write_text(json.dumps({"hosts": entries}))  # JSON is YAML

    def add(self, host: Host) -> Host:
        self.named[host.name] = host
        self.write_settings()
        return host

    def name(self, what: str) -> str:
        return f"{self.prefix}-{what}"

    def host(self, name: str) -> Host:
        if name == "b" and self.hosts.b is None:
            pytest.skip(self.hosts.b_problem or "no host B")
        return self.named[name]

    def virsh(self, host: str, *args: str) -> str:
        return daemons.virsh(self.host(host).virsh, *args)

    def conn(self, host: str) -> Any:
        return daemons.connection(self.host(host))

    def domains(self, host: str) -> list[str]:
        return [str(dom.name()) for dom in self.conn(host).listAllDomains(0)]

    def volumes(self, host: str) -> list[str]:
        pool = self.conn(host).storagePoolLookupByName("default")
        daemons.refresh(pool)
        return [str(vol.name()) for vol in pool.listAllVolumes(0)]

    def create(self, name: str, host: str, guest: Guest, *extra: str) -> Result:
        return self.cli.create_guest(name, guest, "--host", host, *extra)

    def status(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli.ok("status", name, "--json").out)
        return result

    def clear(self) -> None:
        """Take this test's domains and volumes off every host."""
        for host in ("a", "b"):
            if host in self.named:
                daemons.clear(self.named[host], self.prefix)


def shell(lv: LV, name: str, line: str, expect: str) -> str:
    """Type LINE into the guest's shell over the console and wait for it to print EXPECT
    (a slow guest may answer after the console relay went quiet: then its log tells).
    Returns what the console showed."""
    out = lv.cli.ok("console", name, stdin=line + "\n", timeout=60).out
    deadline = time.monotonic() + 60
    while expect not in out:
        assert time.monotonic() < deadline, (
            f"{expect!r} never appeared on {name}'s console:\n{out[-2000:]}"
        )
        time.sleep(0.5)
        out = lv.cli.ok("console", name, "--log").out
    return out


@pytest.fixture
def lv(
    cli: CLI, hosts: Hosts, tmp_path: Path, worker_id: str, request: pytest.FixtureRequest
) -> Iterator[LV]:
    # Domain names are host-wide and shared by all workers: each worker has a prefix.
    test = request.node.name.split("[")[0].removeprefix("test_")[:12].strip("_").replace("_", "-")
    prefix = f"lv{worker_id.removeprefix('gw')}-{test}"
    view = LV(cli, hosts, prefix, tmp_path / "config.yaml")
    view.clear()
    yield view
    with contextlib.suppress(Exception):  # a host a test took away cannot be cleared
        view.clear()
