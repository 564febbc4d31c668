"""Snapshots: offline with qemu-img, live over QMP (memory included); revert really restores."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI, Guest
from tests.vmhelpers import disk_of, guest_run, history_actions


def qemu_io(disk: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )


def pattern_is(disk: Path, byte: int) -> bool:
    result = qemu_io(disk, f"read -P {byte:#x} 0 64k")
    return result.returncode == 0 and "verification failed" not in result.stdout + result.stderr


def snaps(cli: CLI, name: str) -> list[dict[str, object]]:
    return json.loads(cli.ok("snapshots", name, "--json").out)


def test_disk_snapshots_of_a_stopped_vm(cli: CLI, guest: Guest) -> None:
    cli.create_guest("cold", guest)
    disk = disk_of(cli, "cold")
    assert qemu_io(disk, "write -P 0x11 0 64k").returncode == 0
    assert "took snapshot 'base' of VM 'cold' of the disk" in cli.ok("snapshot", "cold", "base").out
    [taken] = snaps(cli, "cold")
    assert taken["name"] == "base" and taken["memory"] is False and taken["vm_state_size"] == 0
    assert str(taken["date"]).endswith("+00:00")
    assert "base" in cli.ok("snapshots", "cold").out

    # A taken name is refused and changes nothing (qcow2 itself would allow duplicates).
    taken_again = cli.run("snapshot", "cold", "base")
    assert taken_again.code == 1
    assert "already has a snapshot named 'base'" in taken_again.err
    assert len(snaps(cli, "cold")) == 1

    assert qemu_io(disk, "write -P 0xab 0 64k").returncode == 0
    missing = cli.run("revert", "cold", "nope")
    assert missing.code == 2 and "has no snapshot named 'nope'" in missing.err
    assert pattern_is(disk, 0xAB), "a failed revert changed the disk"

    cli.ok("revert", "cold", "base")
    assert pattern_is(disk, 0x11), "revert did not bring back the snapshot's data"

    for bad in ("12", "-x", "a b", ""):
        assert cli.run("snapshot", "cold", bad).code == 2
    assert cli.run("snapshot", "cold", "gone", "--delete").code == 2
    cli.ok("snapshot", "cold", "base", "--delete")
    assert snaps(cli, "cold") == []
    assert cli.ok("snapshots", "cold").out.strip() == "VM 'cold' has no snapshots"
    assert history_actions(cli, "cold")[:3] == ["snapshot-delete", "revert", "snapshot"]


@pytest.mark.vm
def test_live_snapshot_and_revert_bring_back_the_running_guest(cli: CLI, guest: Guest) -> None:
    cli.create_guest("warm", guest)
    cli.ok("snapshot", "warm", "blank")  # disk only, taken while stopped
    cli.ok("start", "warm", "--wait-for", "clan-guest: READY", "--timeout", "120")

    # State in guest memory (a tmpfs file) and on its disk, before the snapshot...
    guest_run(
        cli,
        "warm",
        "echo mem-before > /tmp/mark; printf DISK-BEFORE | dd of=/dev/vda conv=fsync 2>/dev/null;"
        " echo step-$((1+1))",
        "step-2",
    )
    taken = cli.ok("snapshot", "warm", "live")
    assert "with memory state" in taken.out
    live = next(s for s in snaps(cli, "warm") if s["name"] == "live")
    assert live["memory"] is True and isinstance(live["vm_state_size"], int)
    assert live["vm_state_size"] > 0

    # ...changed after it.
    guest_run(
        cli,
        "warm",
        "echo mem-after > /tmp/mark; printf DISK-AFTER! | dd of=/dev/vda conv=fsync 2>/dev/null;"
        " echo step-$((2+1))",
        "step-3",
    )
    assert cli.run("snapshot", "warm", "live").code == 1  # name taken, even live
    assert cli.run("revert", "warm", "missing").code == 2
    disk_only = cli.run("revert", "warm", "blank")
    assert disk_only.code == 1 and "holds only disk state" in disk_only.err

    reverted = cli.ok("revert", "warm", "live")
    assert "memory and disk" in reverted.out and "running" in reverted.out
    seen = guest_run(
        cli,
        "warm",
        "cat /tmp/mark; dd if=/dev/vda bs=11 count=1 2>/dev/null; echo; echo step-4",
        "step-4",
    )
    assert "mem-before" in seen and "DISK-BEFORE" in seen
    assert "mem-after" not in seen.replace("echo mem-after", "")
    assert "DISK-AFTER" not in seen

    cli.ok("snapshot", "warm", "live", "--delete")
    assert [s["name"] for s in snaps(cli, "warm")] == ["blank"]
    cli.ok("stop", "warm", "--force")
    dump = qemu_io(disk_of(cli, "warm"), "read -v 0 16").stdout
    assert b"DISK-BEFORE".hex(" ") in dump  # what the disk holds after the guest is gone
    actions = history_actions(cli, "warm")
    assert actions[:4] == ["stop", "snapshot-delete", "revert", "snapshot"]
