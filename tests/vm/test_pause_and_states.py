"""Pause/resume, and every operation that makes no sense in a VM's state (libvirt TCK style)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import CLI, READY, Guest
from tests.vmhelpers import console_log, guest_run, history_actions, status, wait_console


def refused(cli: CLI, *args: str, code: int = 1) -> str:
    result = cli.run(*args)
    assert result.code == code, f"{args}: {result.code} {result.err}"
    assert result.err.startswith("error: ") and "Traceback" not in result.err
    assert result.err.count("\n") == 1, result.err
    return result.err


def test_operations_on_a_stopped_vm_fail_with_specific_errors(cli: CLI, guest: Guest) -> None:
    cli.create_guest("inert", guest)
    cli.ok("snapshot", "inert", "disk")
    for args in (
        ("stop", "inert"),
        ("pause", "inert"),
        ("resume", "inert"),
        ("console", "inert"),
        ("snapshot", "inert", "mem", "--live"),
    ):
        assert "VM 'inert' is not running (it is stopped)" in refused(cli, *args)
    assert [s for s in cli.ok("snapshots", "inert").out.split() if s == "mem"] == []
    assert history_actions(cli, "inert") == ["snapshot", "create"]
    assert "no VM named 'ghost'" in refused(cli, "pause", "ghost", code=2)


@pytest.mark.vm
def test_pause_freezes_the_guest_and_resume_continues_it(cli: CLI, guest: Guest) -> None:
    cli.boot("frozen", guest)
    cli.ok("snapshot", "frozen", "disk-only-taken-live")  # memory state: the VM runs
    # Ticks 1.5 s apart: the console relay returns after 1 s of quiet.
    guest_run(
        cli,
        "frozen",
        "(i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1.5; done) & echo ticker-$((2*3))",
        "ticker-6",
    )
    wait_console(cli, "frozen", "tick-1")

    assert cli.ok("pause", "frozen").out.strip() == "paused VM 'frozen'"
    info = status(cli, "frozen")
    assert info["state"] == "paused" and info["qmp"] is True
    assert "paused" in cli.ok("status", "frozen").out
    time.sleep(0.3)  # output already in flight may still land
    frozen_at = console_log(cli, "frozen")
    time.sleep(3.5)  # two ticks' time
    assert console_log(cli, "frozen") == frozen_at, "the guest kept printing while paused"

    # Wrong-state operations on a paused VM, each refused without changing anything.
    assert "already paused" in refused(cli, "pause", "frozen")
    assert "stop it to resize its disk" in refused(cli, "resize", "frozen", "--disk", "128")
    assert status(cli, "frozen")["state"] == "paused"

    assert cli.ok("resume", "frozen").out.strip() == "resumed VM 'frozen'"
    assert status(cli, "frozen")["state"] == "running"
    last = frozen_at.rsplit("tick-", 1)[1].split()[0]
    wait_console(cli, "frozen", f"tick-{int(last) + 2}", after=len(frozen_at))

    # Wrong-state operations on a running VM.
    assert "is not paused" in refused(cli, "resume", "frozen")
    assert "stop it to resize its disk" in refused(cli, "resize", "frozen", "--disk", "128")
    assert "already running" in refused(cli, "start", "frozen")
    cli.ok("stop", "frozen", "--force")
    cli.ok("snapshot", "frozen", "cold")
    cli.ok("start", "frozen", "--wait-for", READY, "--timeout", "120")
    assert "holds only disk state" in refused(cli, "revert", "frozen", "cold")
    cli.ok("stop", "frozen", "--force")
    assert history_actions(cli, "frozen")[:8] == [
        "stop",
        "start",
        "snapshot",
        "stop",
        "resume",
        "pause",
        "snapshot",
        "start",
    ]
