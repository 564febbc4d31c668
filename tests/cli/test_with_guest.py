"""The command line with booted guests: status tells the agent without waiting for one
that is not there, the console written to a file carries no terminal queries, and an
interrupted start says what it left running."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CLI, READY, Guest, kill_leftover_qemu
from tests.test_architecture import HEAVY

pytestmark = [pytest.mark.vm, pytest.mark.xdist_group("cli-guests")]
NO_AGENT = "console=ttyS0 quiet no_timer_check clan.noagent"  # the example guest starts none


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory, guest: Guest) -> Iterator[CLI]:
    """Two running guests: "talk" runs its agent, "mute" none (its port stays closed)."""
    cli = CLI(tmp_path_factory.mktemp("cli-guests") / "state")
    try:
        cli.create_guest("talk", guest)
        cli.create_guest("mute", guest, append=NO_AGENT)
        for name in ("talk", "mute"):
            cli.ok("start", name, "--wait-for", READY, "--timeout", "120")
        cli.ok("status", "talk", "--wait-agent", "--timeout", "60")
        yield cli
    finally:
        kill_leftover_qemu(cli.state_dir)


def status(cli: CLI, *args: str) -> dict[str, object]:
    found: dict[str, object] = json.loads(cli.ok("status", *args, "--json").out)
    return found


def test_status_tells_the_agent_from_the_guest(booted: CLI) -> None:
    talk, mute = status(booted, "talk"), status(booted, "mute")
    assert (talk["state"], talk["qmp"], talk["agent"]) == ("running", True, True)
    assert (mute["state"], mute["qmp"], mute["agent"]) == ("running", True, False)
    # Asked to wait, it waits for an agent that may come; this one never does.
    assert status(booted, "mute", "--wait-agent", "--timeout", "2")["agent"] is False
    said = booted.ok("status", "mute").out.strip()
    assert said == f"mute: running (pid {mute['pid']}), no guest agent answering"
    said = booted.ok("status", "talk").out.strip()
    assert said == f"talk: running (pid {talk['pid']}), guest agent answering"
    assert talk["agent_answered_at"] is not None and mute["agent_answered_at"] is None
    # exec still waits for the agent it needs, and says it never came.
    failed = booted.run("exec", "mute", "--", "true")
    assert failed.code == 1 and "agent" in failed.err, failed.err


def test_start_loads_its_definition_without_the_schema(booted: CLI, guest: Guest) -> None:
    """A stored definition was validated when it was written: a start pays for no pydantic."""
    booted.create_guest("quick", guest)
    probe = (
        "import sys\n"
        "from clan_vm_tasks.cli import main\n"
        "try:\n"
        f"    main(['clan-vm-manager', 'start', 'quick', '--wait-for', {READY!r}])\n"
        "except SystemExit as end:\n"
        "    assert not end.code, end.code\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], env=booted.env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert status(booted, "quick")["state"] == "running"
        assert READY in booted.ok("console", "quick", "--log").out
        loaded = done.stderr.split()
        assert "clan_vm_tasks.models" in loaded and "clan_vm_tasks.backends.qemu.argv" in loaded
        heavy = [m for m in loaded if m.split(".")[0] in ("pydantic", "pydantic_core", "invoke")]
        assert heavy == [] and "clan_vm_tasks.schema" not in loaded
        # A VM made on the command line has no flake: nothing of evaluating one is loaded.
        assert [m for m in loaded if m.startswith("clan_vm_tasks.nix.")] == [
            "clan_vm_tasks.nix.launch",
            "clan_vm_tasks.nix.origin",
            "clan_vm_tasks.nix.request",
        ]
        assert "_hashlib" not in loaded
    finally:
        booted.run("stop", "quick", "--force")


def test_the_console_written_to_a_file_has_no_terminal_queries(booted: CLI, tmp_path: Path) -> None:
    out = tmp_path / "console.txt"
    with out.open("wb") as written:
        done = subprocess.run(
            [*booted.command(), "console", "talk"],
            input=b"echo marker-$((6*7))\n",
            stdout=written,
            stderr=subprocess.PIPE,
            env=booted.env,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    text = out.read_bytes()
    assert b"marker-42" in text
    # The guest's shell asked for the cursor position (it is in the console log) ...
    log = booted.state_dir / "vms" / "talk" / "console.log"
    assert b"\x1b[6n" in log.read_bytes()
    # ... but nothing of it reached the file, nor the log printed into a pipe.
    assert b"\x1b[" not in text.replace(b"\x1b[?", b"")
    assert b"\x1b[6n" not in booted.ok("console", "talk", "--log").out.encode()


def test_ctrl_c_while_start_waits_says_the_vm_keeps_running(cli: CLI, guest: Guest) -> None:
    cli.create_guest("waiter", guest)
    proc = subprocess.Popen(
        [*cli.command(), "start", "waiter", "--wait-for", "NEVER PRINTED", "--timeout", "300"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_boot(cli, "waiter", proc, None)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "error: interrupted while waiting for 'NEVER PRINTED' on the console of 'waiter'; "
        "the VM is still running (clan-vm-manager stop waiter)"
    )
    assert status(cli, "waiter")["state"] == "running"
    assert "(acpi)" in cli.ok("stop", "waiter").out
    before = _log(cli, "waiter").stat().st_ino
    # In the foreground, with a terminal to type into, it says that typing goes nowhere.
    main, secondary = pty.openpty()
    try:
        front = subprocess.Popen(
            [*cli.command(), "start", "waiter", "--foreground"],
            env=cli.env,
            stdin=secondary,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for_boot(cli, "waiter", front, before)
        front.send_signal(signal.SIGTERM)
        _, err = front.communicate(timeout=60)
    finally:
        os.close(main)
        os.close(secondary)
    assert front.returncode == 0, err
    assert "takes no input: type into it with 'clan-vm-manager console waiter'" in err
    assert status(cli, "waiter")["state"] == "stopped"


def _log(cli: CLI, name: str) -> Path:
    return cli.state_dir / "vms" / name / "console.log"


def _wait_for_boot(cli: CLI, name: str, proc: subprocess.Popen[str], old_inode: int | None) -> None:
    """Until this boot's console log (not the one of the boot before) shows the ready line."""
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline and proc.poll() is None
        try:
            log = _log(cli, name)
            if log.stat().st_ino != old_inode and READY.encode() in log.read_bytes():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.2)


def test_status_of_a_running_vm_loads_nothing_heavy(booted: CLI) -> None:
    """status talks QMP and the agent itself: no asyncio, no schema, no invoke."""
    probe = (
        "import sys\n"
        "from clan_vm_tasks.cli import main\n"
        "try:\n"
        "    main(['clan-vm-manager', 'status', 'talk', '--json'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=booted.env, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout)["agent"] is True
    loaded = done.stderr.split()
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY[-2:])]
    # Nor OpenSSL, which hashlib loads before anything is hashed.
    assert heavy == [] and "subprocess" not in loaded and "_hashlib" not in loaded
