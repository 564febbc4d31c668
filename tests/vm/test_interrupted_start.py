"""Start is a transaction: whatever interrupts it after QEMU was launched, the next command
finds the VM recorded running with its real pid, or QEMU gone, and can go on.

Faults are injected at exact system calls with strace (without -f, so QEMU, a child,
runs untraced). The renames of a first ``start`` are: 1 its write-ahead marker,
2 the ``starting`` record, 3 the record with QEMU's pid, 4 the ``running`` record.
SIGKILL stops the command on entry to the call (it does not happen); the other signals
arrive just after the call.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI, READY, Guest, Result
from tests.vmhelpers import history_actions, status

pytestmark = pytest.mark.vm


def run_injected(cli: CLI, inject: str, *args: str, path: Path | None = None) -> Result:
    syscall = inject.split(":", 1)[0]
    argv = ["strace", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}"]
    argv += ["-P", str(path)] if path else []
    argv += ["-e", f"inject={inject}", *cli.command(), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=cli.env, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def qemus_of(state_dir: Path) -> list[int]:
    """Live QEMU processes whose command line names this state directory."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if entry.isdigit() and "qemu-system" in cmdline and str(state_dir) in cmdline:
            found.append(int(entry))
    return found


def assert_truthful_and_usable(cli: CLI, name: str) -> None:
    """After the fault: the next command tells the truth, and start and stop work."""
    listed = {vm["name"]: vm for vm in json.loads(cli.ok("list", "--json").out)}
    running = qemus_of(cli.state_dir)
    if listed[name]["state"] == "running":
        assert running == [listed[name]["pid"]]
    else:
        assert listed[name]["state"] == "stopped" and running == [], (listed, running)
        cli.ok("start", name, "--wait-for", READY, "--timeout", "120")
    assert "(acpi)" in cli.ok("stop", name).out
    assert qemus_of(cli.state_dir) == []
    assert list((cli.state_dir / "pending").glob("*")) == []


@pytest.mark.parametrize("when", [1, 2, 3, 4])
def test_start_killed_at_each_record(cli: CLI, guest: Guest, when: int) -> None:
    cli.create_guest("killed", guest)
    result = run_injected(cli, f"rename:signal=SIGKILL:when={when}", "start", "killed")
    assert result.code == -signal.SIGKILL
    assert_truthful_and_usable(cli, "killed")
    if when >= 3:  # QEMU had been launched: its start is recorded as failed
        events = json.loads(cli.ok("history", "--vm", "killed", "--json").out)
        interrupted = [e for e in events if e["action"] == "start" and e["result"] == "failed"]
        assert interrupted and "interrupted" in interrupted[-1]["details"]


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
@pytest.mark.parametrize("when", [2, 3])
def test_start_interrupted_by_a_signal_ends_what_it_launched(
    cli: CLI, guest: Guest, sig: str, code: int, when: int
) -> None:
    cli.create_guest("interrupted", guest)
    result = run_injected(cli, f"rename:signal={sig}:when={when}", "start", "interrupted")
    assert result.code == code, result
    assert result.err.strip().splitlines()[-1].startswith("error: interrupted"), result.err
    assert "Traceback" not in result.err
    # Undone before the command ended: no QEMU, the VM stopped, the start recorded failed.
    assert qemus_of(cli.state_dir) == []
    assert status(cli, "interrupted")["state"] == "stopped"
    assert history_actions(cli, "interrupted")[0] == "start"
    assert_truthful_and_usable(cli, "interrupted")


def test_a_full_disk_while_recording_the_start_ends_qemu(cli: CLI, guest: Guest) -> None:
    cli.create_guest("full", guest)
    result = run_injected(cli, "rename:error=ENOSPC:when=4", "start", "full")
    assert result.code == 1 and "No space left on device" in result.err, result
    assert qemus_of(cli.state_dir) == []
    assert status(cli, "full")["state"] == "stopped"
    assert_truthful_and_usable(cli, "full")


def test_an_unreadable_pidfile_does_not_leave_qemu_running(cli: CLI, guest: Guest) -> None:
    cli.create_guest("nopid", guest)
    pidfile = cli.state_dir / "vms" / "nopid" / "qemu.pid"
    result = run_injected(cli, "openat:error=EACCES", "start", "nopid", path=pidfile)
    assert result.code == 1 and "cannot read QEMU's pidfile" in result.err, result
    assert qemus_of(cli.state_dir) == []
    assert_truthful_and_usable(cli, "nopid")


def test_qmp_that_never_answers_does_not_leave_qemu_running(cli: CLI, guest: Guest) -> None:
    cli.create_guest("mute", guest)
    cli.env["CLAN_VM_QMP_TIMEOUT"] = "3"
    result = run_injected(cli, "connect:error=ECONNREFUSED", "start", "mute")
    del cli.env["CLAN_VM_QMP_TIMEOUT"]
    assert result.code == 1 and "QMP never answered" in result.err, result
    assert qemus_of(cli.state_dir) == []
    assert_truthful_and_usable(cli, "mute")


def test_foreground_stops_the_vm_gracefully_when_the_terminal_hangs_up(
    cli: CLI, guest: Guest
) -> None:
    cli.create_guest("hangup", guest)
    proc = subprocess.Popen(
        [*cli.command(), "start", "hangup", "--foreground"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    seen = b""
    while READY.encode() not in seen:
        chunk = proc.stdout.read1(4096)
        assert chunk, "QEMU ended before the ready line"
        seen += chunk
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=90) == 0
    assert status(cli, "hangup")["last_stop"] == "acpi"
    assert qemus_of(cli.state_dir) == []
