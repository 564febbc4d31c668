"""Placing VMs on libvirt hosts: wrong hosts refused before anything is made, unreachable
hosts failing fast, disks kept on the host, leftovers of killed commands taken away, and
the inventory's targetHost pointing where the VM is reached."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from clan_vm_tasks.clan import inventory, sync
from clan_vm_tasks.models import RootFilesystem, Share, VMConfig, dump
from clan_vm_tasks.state.store import Store, VMPaths, VMState
from clan_vm_tasks.vm import ssh
from tests.conftest import CLI, Guest
from tests.libvirt import daemons
from tests.libvirt.conftest import LV


def settings(cli: CLI, tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    cli.env["CLAN_VM_CONFIG"] = str(path)


def refused(cli: CLI, *args: str, code: int) -> str:
    result = cli.run(*args)
    assert result.code == code, f"{args}: {result.code} {result.err}"
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    return result.err


def test_a_wrong_host_is_refused_and_nothing_is_made(
    cli: CLI, guest: Guest, tmp_path: Path
) -> None:
    settings(cli, tmp_path, 'hosts: {hv1: "qemu+ssh://root@hv1.invalid/system"}\n')
    args = ["--kernel", str(guest.kernel), "--disk", "16"]
    for extra, message in (
        (["--host", "nowhere"], "unknown host 'nowhere'"),
        (["--host", "http://hv1/system"], "invalid libvirt URI"),
        (["--host", "qemu+ssh://root@hv1/"], "the path must be /system or /session"),
        # A definition (maybe someone else's flake) may not make libvirt run a program.
        (["--host", "qemu+ssh://root@hv1/system?command=/bin/sh"], "runs a program"),
        (["--host", "qemu+ext:///system?command=/bin/sh"], "runs a program"),
        (["--host", "qemu+ssh://root@hv1/system?evil=1"], "unknown parameter 'evil'"),
        (["--host", "hv1", "--qemu-arg", "-no-reboot"], "not supported on libvirt hosts"),
    ):
        assert message in refused(cli, "create", "web", *args, *extra, code=2)
    assert json.loads(cli.ok("list", "--json").out) == []


def test_a_wrong_hosts_setting_is_refused(cli: CLI, tmp_path: Path) -> None:
    for text, message in (
        ("hosts: [hv1]\n", "hosts must map names to libvirt URIs"),
        ('hosts: {"bad name": "qemu:///system"}\n', "invalid host name 'bad name'"),
        ("hosts: {hv1: 7}\n", "must be a libvirt URI"),
        ('hosts: {hv1: "xen:///system"}\n', "invalid libvirt URI"),
    ):
        settings(cli, tmp_path, text)
        assert message in refused(cli, "list", code=2)


def test_an_unreachable_host_fails_fast_and_leaves_nothing(
    cli: CLI, guest: Guest, tmp_path: Path
) -> None:
    if daemons.missing():
        pytest.skip(daemons.missing())
    closed = daemons.free_port()  # nothing listens there
    silent = socket.socket()  # accepts, never speaks: a hung machine
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    hosts = {
        "closed": f"qemu+ssh://root@127.0.0.1:{closed}/system",
        "silent": f"qemu+ssh://root@127.0.0.1:{silent.getsockname()[1]}/system",
    }
    settings(cli, tmp_path, json.dumps({"hosts": hosts}))
    try:
        for host, why in (("closed", "Connection refused"), ("silent", "timed out")):
            began = time.monotonic()
            err = refused(cli, "create", host, "--host", host, "--disk", "16", code=1)
            assert f"host {host} is unreachable: " in err and why in err
            assert time.monotonic() - began < 15  # ssh's ConnectTimeout, through our wrapper
    finally:
        silent.close()
    assert json.loads(cli.ok("list", "--json").out) == []


def test_delete_keeps_the_disk_on_the_host_and_a_new_vm_does_not_take_it(
    lv: LV, guest: Guest, tmp_path: Path
) -> None:
    name = lv.name("kept")
    lv.create(name, "a", guest)
    deleted = lv.cli.ok("delete", name).out
    assert (
        f"its disk is kept as volume {name}.qcow2 in pool 'default' on host a "
        f"(/var/lib/libvirt/images/{name}.qcow2)"
    ) in deleted
    assert name not in lv.domains("a")
    assert [v for v in lv.volumes("a") if v.startswith(name)] == [f"{name}.qcow2"]
    args = ["--kernel", str(guest.kernel), "--disk", "16", "--host", "a"]
    err = refused(lv.cli, "create", name, *args, code=1)
    assert f"a volume {name}.qcow2 already exists in pool 'default' on host a" in err
    assert name not in lv.domains("a") and json.loads(lv.cli.ok("list", "--json").out) == []

    lv.virsh("a", "vol-delete", f"{name}.qcow2", "default")
    lv.create(name, "a", guest)
    # Another state directory's VM of that name never takes this one's domain.
    other = CLI(tmp_path / "other-state")
    other.env = {**lv.cli.env, "CLAN_VM_STATE_DIR": str(other.state_dir)}
    assert "is not this VM's (made by " in refused(other, "create", name, *args, code=1)
    lv.cli.ok("delete", name, "--force")
    assert name not in lv.domains("a") and not [v for v in lv.volumes("a") if name in v]


@pytest.mark.parametrize("nixos_shaped", [False, True])
def test_what_a_killed_create_made_on_the_host_is_taken_away(
    lv: LV, guest: Guest, monkeypatch: pytest.MonkeyPatch, nixos_shaped: bool
) -> None:
    """A create killed after it made the domain and the disk on the host leaves its hidden
    directory; the next command, whatever it is, takes the host's part away too (with a
    NixOS-shaped VM: a disk formatted here and sent, a directory of its own there)."""
    from clan_vm_tasks.vm import machines

    name = lv.name("killed")
    monkeypatch.setenv("CLAN_VM_CONFIG", str(lv.settings))
    shaped: dict[str, Any] = {}
    if nixos_shaped:
        shaped["root_filesystem"] = RootFilesystem()
        shaped["shares"] = {"xchg": Share(source=None, read_only=False, security_model="none")}
    config = VMConfig(
        name=name,
        memory=64,
        disk_size=16,
        kernel=guest.kernel,
        initrd=guest.initrd,
        host="a",
        **shaped,
    )
    store = Store(lv.cli.state_dir).ensure()
    staging = store.vms / f".creating-{name}-999999"
    staging.mkdir()
    (staging / "config.json").write_text(json.dumps(dump(config)))
    machines.backend("a").provision(config, VMPaths(staging), store)
    assert name in lv.domains("a") and f"{name}.qcow2" in lv.volumes("a")
    if nixos_shaped:  # what a guest left in its own directory goes too
        assert f"{name}.share-xchg" in lv.volumes("a")
        Path(f"/var/lib/libvirt/images/{name}.share-xchg/left-by-the-guest").touch()

    result = lv.cli.ok("list", "--json")
    assert json.loads(result.out) == [] and result.err == ""
    assert name not in lv.domains("a")
    assert not [v for v in lv.volumes("a") if v.startswith(name)]
    assert not staging.exists()


def test_the_inventory_reaches_a_vm_on_a_libvirt_host(lv: LV, guest: Guest, tmp_path: Path) -> None:
    clan = tmp_path / "clan"
    clan.mkdir()
    name, port = lv.name("inv"), daemons.free_port()
    lv.create(name, "a-ssh", guest, "--forward", f"tcp:{port}:22", "--clan-dir", str(clan))
    machines = json.loads((clan / "inventory.json").read_text())["machines"]
    assert machines[name]["deploy"]["targetHost"] == f"root@127.0.0.1:{port}"


def test_target_host_of_a_vm_on_another_machine(tmp_path: Path) -> None:
    """A forward of a VM on a remote host is reached at that host, not at 127.0.0.1."""
    store = Store(tmp_path / "state").ensure()
    vm = store.vms / "web"
    vm.mkdir()
    forward = {"protocol": "tcp", "host_port": 2222, "guest_port": 22}
    config = {"name": "web", "host": "qemu+ssh://root@hv1.example/system"}
    config["network"] = {"mode": "user", "forward_ports": [forward]}  # type: ignore[assignment]
    (vm / "config.json").write_text(json.dumps(config))
    (vm / "state.json").write_bytes(VMState().to_json())
    assert sync.ssh_target(store, "web") == (2222, "hv1.example")
    (vm / "state.json").write_bytes(
        VMState(status="running", forwards=["tcp:hv1.example:24567->22"]).to_json()
    )
    assert sync.ssh_target(store, "web") == (24567, "hv1.example")
    assert ssh.target(store, "web", 0) == ("hv1.example", 24567)  # the ssh task goes there too
    clan = tmp_path / "clan"
    clan.mkdir()
    inventory.push(clan, "web", ssh_port=24567, address="hv1.example")
    inventory.push(clan, "db", ssh_port=22, address="fd00::5")
    machines = json.loads((clan / "inventory.json").read_text())["machines"]
    assert machines["web"]["deploy"]["targetHost"] == "root@hv1.example:24567"
    assert machines["db"]["deploy"]["targetHost"] == "root@[fd00::5]:22"
