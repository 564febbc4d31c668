"""The whole lifecycle of a VM on a libvirt host: this machine's libvirtd (qemu:///system)
and an independent one reached over qemu+ssh://, asserting what the user and the guest see."""

from __future__ import annotations

import json
import socket

import pytest

from examples.guest import POWER_BUTTON_LINE
from tests.conftest import READY, Guest
from tests.libvirt.conftest import LV, shell

pytestmark = pytest.mark.vm


def accepts(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["a", "b"])
def test_whole_lifecycle_on_a_libvirt_host(lv: LV, guest: Guest, host: str) -> None:
    lv.host(host)
    cli, name = lv.cli, lv.name("life")
    created = lv.create(name, host, guest, "--forward", "tcp:auto:22")
    assert f"created VM '{name}' on {host}" in created.out
    # Named after the VM on its host, the disk a volume there.
    assert name in lv.domains(host) and f"{name}.qcow2" in lv.volumes(host)

    started = cli.ok("start", name, "--wait-for", READY, "--timeout", "120")
    assert f"started VM '{name}' on {host} (" in started.out and "appeared" in started.out
    info = lv.status(name)
    assert (info["state"], info["host"], info["pid"]) == ("running", host, None)
    [forward] = info["forwards"]
    address = forward.removeprefix("tcp:").removesuffix("->22")
    assert accepts(address), f"the forward {forward} does not accept connections"
    [row] = json.loads(cli.ok("list", "--json").out)
    assert (row["name"], row["host"], row["state"]) == (name, host, "running")
    shell(lv, name, "echo $((6*7))-pong", "42-pong")

    cli.ok("pause", name)
    assert f"{name}: paused" in cli.ok("status", name).out
    cli.ok("resume", name)
    assert "with memory state" in cli.ok("snapshot", name, "s1").out
    shell(lv, name, "touch /tmp/marker; echo MARK-$((1+1))", "MARK-2")
    assert "it is running" in cli.ok("revert", name, "s1").out
    shell(lv, name, "test -e /tmp/marker && echo HAS-$((1+1)) || echo NO-$((1+1))", "NO-2")
    assert accepts(address), "the forward did not come back after the revert"

    stopped = cli.ok("stop", name)
    assert "(acpi)" in stopped.out and f"on {host}" in stopped.out
    assert POWER_BUTTON_LINE in cli.ok("console", name, "--log").out
    assert "from 64 MiB to 512 MiB" in cli.ok("resize", name, "--disk", "512").out
    shown = json.loads(cli.ok("show", name, "--json").out)
    assert (shown["domain"], shown["last_stop"], shown["disk_size"]) == (name, "acpi", 512)
    [disk] = shown["disks"]
    assert disk["path"].endswith(f"/{name}.qcow2") and disk["virtual_size"] == 512
    assert "of the disk" in cli.ok("snapshot", name, "off").out
    snaps = {s["name"]: s["memory"] for s in json.loads(cli.ok("snapshots", name, "--json").out)}
    assert snaps == {"s1": True, "off": False}

    # Destroyed behind our back: a crash, as a killed QEMU is locally.
    cli.ok("start", name, "--timeout", "120")
    lv.conn(host).lookupByName(name).destroy()
    assert lv.status(name)["state"] == "crashed"
    assert cli.run("stop", name).code == 1

    deleted = cli.ok("delete", name, "--force")
    assert f"deleted VM '{name}' on {host}" in deleted.out
    assert name not in lv.domains(host)
    assert not [v for v in lv.volumes(host) if v.startswith(name)]
    events = json.loads(cli.ok("history", "--vm", name, "--json").out)
    assert [e["action"] for e in events] == [
        "delete", "crash", "start", "snapshot", "resize", "stop", "revert", "snapshot",
        "resume", "pause", "start", "create",
    ]  # fmt: skip
    assert all(e["details"].endswith(f"on {host}") for e in events)
