"""``set NAME``: a VM made on the command line changed like ``limactl edit`` or ``virsh
setvcpus --config``, asserted through what the guest sees (its CPUs, memory, disk, kernel
command line, network) on real QEMU."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from tests.conftest import CLI, READY, Guest
from tests.nix_fixtures import NixCLI, ncli, needs_nix, test_flake
from tests.vmhelpers import console_log, guest_run, history_actions, status, wait_console

__all__ = ["ncli", "test_flake"]  # fixtures
APPEND = "console=ttyS0 quiet no_timer_check"


def history(cli: CLI, name: str) -> list[dict[str, str]]:
    return json.loads(cli.ok("history", "--vm", name, "--json").out)


def guest_sees(cli: CLI, name: str) -> dict[str, str]:
    """CPUs, memory (MiB), root disk (MiB), kernel command line and network interfaces, as
    the running guest reports them."""
    out = guest_run(
        cli,
        name,
        "echo SEEN cpus=$(grep -c ^processor /proc/cpuinfo)"
        " mem=$(( $(sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo) / 1024 ))"
        " disk=$(( $(cat /sys/block/vda/size) / 2048 ))"
        " nics=$(ls /sys/class/net | tr '\\n' ,)"
        " cmdline=$(cat /proc/cmdline | tr ' ' +) END-$((6*7))",
        "END-42",
    )
    line = next(x for x in out.splitlines() if x.startswith("SEEN ") and "END-42" in x)
    return dict(word.split("=", 1) for word in line.split()[1:-1])


def forwarded(cli: CLI, name: str, guest_port: int) -> int:
    for forward in status(cli, name)["forwards"]:
        head, target = forward.split("->")
        if target == str(guest_port):
            return int(head.rsplit(":", 1)[1])
    raise AssertionError(f"no forward to {guest_port}: {status(cli, name)['forwards']}")


@pytest.mark.vm
def test_set_changes_a_stopped_vm_at_once_and_the_guest_sees_it(cli: CLI, guest: Guest) -> None:
    cli.create_guest("edit", guest, "--forward", "tcp:auto:22")
    changed = cli.ok(
        "set", "edit", "--cpus", "2", "--memory", "256", "--disk", "96",
        "--append", f"{APPEND} clan.hostname=edited",
        "--no-forward", "auto:22", "--forward", "tcp:auto:8080",
    )  # fmt: skip
    assert changed.out.startswith("changed VM 'edit': cpus 1 -> 2, memory 192 -> 256 MiB")
    info = status(cli, "edit")
    assert (info["cpus"], info["memory"], info["disk_size"]) == (2, 256, 96)
    assert info["forwards"] == ["tcp:127.0.0.1:auto->8080"] and info["pending"] is None
    # The disk grew at once (a stopped VM), as the image says.
    assert json.loads(cli.ok("show", "edit", "--json").out)["disks"][0]["virtual_size"] == 96
    [event] = [e for e in history(cli, "edit") if e["action"] == "set"]
    assert "cpus 1 -> 2" in event["details"] and "disk 64 -> 96 MiB" in event["details"]

    cli.ok("start", "edit", "--wait-for", READY, "--timeout", "120")
    seen = guest_sees(cli, "edit")
    assert seen["cpus"] == "2" and seen["disk"] == "96"
    assert 192 < int(seen["mem"]) <= 256, seen  # the kernel keeps some for itself
    assert "clan.hostname=edited" in seen["cmdline"]
    # The new forward reaches the guest's port 8080 (QEMU listens for it).
    with socket.create_connection(("127.0.0.1", forwarded(cli, "edit", 8080)), timeout=5):
        pass
    cli.ok("stop", "edit", "--force")


@pytest.mark.vm
def test_set_on_a_running_vm_waits_for_its_next_start(cli: CLI, guest: Guest) -> None:
    cli.boot("live", guest)
    before = (cli.state_dir / "vms" / "live" / "config.json").read_bytes()
    waiting = cli.ok("set", "live", "--cpus", "2", "--disk", "80", "--network", "none")
    assert "is running; at its next start: cpus 1 -> 2" in waiting.out
    assert (cli.state_dir / "vms" / "live" / "config.json").read_bytes() == before
    # status and show say what waits; the running guest is untouched.
    said = cli.ok("status", "live").out
    assert re.match(r"live: running \(pid \d+\), [a-z ]+; at its next start: cpus 1 -> 2", said), (
        said
    )
    info = status(cli, "live")
    assert info["cpus"] == 1 and info["network"] == "user"
    assert info["pending"]["changes"]["cpus"] == {"from": 1, "to": 2}
    assert info["pending"]["changes"]["network"] == {"from": "user", "to": "none"}
    shown = cli.ok("show", "live").out
    assert re.search(r"^pending: +cpus 1 -> 2, .*network user -> none.*\(at the next start\)$",
                     shown, re.MULTILINE), shown  # fmt: skip
    assert json.loads(cli.ok("show", "live", "--json").out)["pending"] == info["pending"]
    seen = guest_sees(cli, "live")
    assert seen["cpus"] == "1" and seen["disk"] == "64" and "eth0" in seen["nics"]
    # A second set adds to what waits.
    cli.ok("set", "live", "--memory", "256")
    assert status(cli, "live")["pending"]["changes"]["memory"] == {"from": 192, "to": 256}

    restarted = cli.ok("restart", "live", "--wait-for", READY)
    assert "applied the change made while 'live' ran: cpus 1 -> 2" in restarted.err
    info = status(cli, "live")
    assert (info["cpus"], info["memory"], info["disk_size"], info["network"]) == (
        2, 256, 80, "none",
    )  # fmt: skip
    assert info["pending"] is None
    seen = guest_sees(cli, "live")
    assert seen["cpus"] == "2" and seen["disk"] == "80" and seen["nics"] == "lo,"
    events = history(cli, "live")
    assert [e["action"] for e in events[:4]] == ["restart", "set", "set", "set"]
    assert events[1]["details"].startswith("applied at start (set while it ran): cpus 1 -> 2")
    assert events[3]["details"].endswith("(pending: applies at the next start)")

    # Set back to what runs, a waiting change is withdrawn and nothing changes at the start.
    cli.ok("set", "live", "--cpus", "1")
    assert status(cli, "live")["pending"] is not None
    withdrawn = cli.ok("set", "live", "--cpus", "2")
    assert "the change that waited for its next start is withdrawn" in withdrawn.out
    assert status(cli, "live")["pending"] is None
    assert not (cli.state_dir / "vms" / "live" / "next.json").exists()
    cli.ok("stop", "live", "--force")
    assert "applied the change" not in cli.ok("start", "live").err
    assert history_actions(cli, "live")[:2] == ["start", "stop"]
    cli.ok("stop", "live", "--force")


# (arguments, words in the error): each refused with exit code 2 before anything changes.
REFUSED = [
    ((), "set needs something to change"),
    (("--cpus", "0"), "--cpus must be positive"),
    (("--cpus", "two"), "--cpus must be a number"),
    (("--memory", "1.5"), "--memory must be a whole number"),
    (("--memory", "8"), "memory: Input should be greater than or equal to 16"),
    (("--disk", "32"), "refusing to shrink the disk of VM 'fixed' from 64 MiB to 32 MiB"),
    (("--forward", "tcp:x:22"), "invalid port forward 'tcp:x:22'"),
    (("--forward", "tcp:2222:22"), "VM 'fixed' already forwards tcp:2222:22"),
    (("--forward", "tcp:2222:80"), "host port tcp:2222 is forwarded twice"),
    (("--forward", "tcp:2222:22:1"), "invalid port forward"),
    (("--no-forward", "2223"), "VM 'fixed' has no forward '2223' to remove"),
    (("--no-forward", "udp:2222"), "VM 'fixed' has no forward 'udp:2222' to remove"),
    (("--no-forward", "x:y:z"), "invalid --no-forward 'x:y:z'"),
    (("--network", "wifi"), "unknown network mode 'wifi'"),
    (("--network", "none"), "needs user-mode networking, not none: add --no-forward all"),
    (("--network", "tap", "--no-forward", "all"), "network mode tap needs a tap device"),
    (("--bridge", "br0"), "--bridge needs --network bridge"),
    (("--tap", "tap0"), "--tap needs --network tap"),
    (("--cpus", "2", "--append", "\udcff"), "is not valid UTF-8"),
]


@pytest.mark.parametrize(("args", "words"), REFUSED, ids=[" ".join(a) or "-" for a, _ in REFUSED])
def test_set_refuses_a_wrong_request_before_anything_changes(
    cli: CLI, guest: Guest, args: tuple[str, ...], words: str
) -> None:
    cli.create_guest("fixed", guest, "--forward", "tcp:2222:22")
    vm = cli.state_dir / "vms" / "fixed"
    before = {p.name: p.read_bytes() for p in vm.iterdir() if p.is_file()}
    events = cli.ok("history", "--json").out
    result = cli.run("set", "fixed", *args)
    assert result.code == 2, result
    assert result.err.count("\n") == 1 and result.err.startswith("error: ") and words in result.err
    assert {p.name: p.read_bytes() for p in vm.iterdir() if p.is_file()} == before
    assert cli.ok("history", "--json").out == events


def test_set_of_an_unknown_vm_is_refused(cli: CLI) -> None:
    result = cli.run("set", "nosuch", "--cpus", "2")
    assert result.code == 2 and "no VM named 'nosuch'" in result.err


def test_set_of_the_same_values_changes_nothing(cli: CLI, guest: Guest) -> None:
    cli.create_guest("same", guest)
    config = cli.state_dir / "vms" / "same" / "config.json"
    before = config.read_bytes()
    said = cli.ok("set", "same", "--cpus", "1", "--memory", "192", "--disk", "64")
    assert said.out.strip() == "VM 'same' already has these settings"
    assert config.read_bytes() == before and history_actions(cli, "same") == ["create"]


@pytest.mark.vm
def test_a_vm_without_a_network_gets_user_networking_and_a_forward(cli: CLI, guest: Guest) -> None:
    cli.create_guest("netw", guest, "--network", "none")
    cli.ok("set", "netw", "--network", "user", "--forward", "tcp:auto:8080")
    assert status(cli, "netw")["forwards"] == ["tcp:127.0.0.1:auto->8080"]
    cli.ok("start", "netw", "--wait-for", READY, "--timeout", "120")
    wait_console(cli, "netw", READY, timeout=120)
    assert "eth0" in guest_sees(cli, "netw")["nics"]
    with socket.create_connection(("127.0.0.1", forwarded(cli, "netw", 8080)), timeout=5):
        pass
    assert READY in console_log(cli, "netw")
    cli.ok("stop", "netw", "--force")


@needs_nix
def test_a_vm_from_a_flake_refuses_set_and_names_the_flake(ncli: NixCLI, test_flake: Path) -> None:
    ncli.ok("create", "alpha", "--flake", str(test_flake))
    config = ncli.state_dir / "vms" / "alpha" / "config.json"
    before = config.read_bytes()
    refused = ncli.run("set", "alpha", "--memory", "256")
    assert refused.code == 2
    assert refused.err == (
        f"error: VM 'alpha' comes from the flake {test_flake}: change clanVms.alpha there "
        "(clan-vm-manager start alpha applies it)\n"
    )
    assert config.read_bytes() == before
