"""The whole lifecycle on real QEMU (TCG), asserting what the guest printed."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from examples.guest import POWER_BUTTON_LINE
from tests.conftest import CLI, READY, Guest

pytestmark = pytest.mark.vm


def status(cli: CLI, name: str) -> dict[str, object]:
    return json.loads(cli.ok("status", name, "--json").out)


def console_log(cli: CLI, name: str) -> str:
    return cli.ok("console", name, "--log").out


def history(cli: CLI, name: str) -> list[dict[str, str]]:
    return json.loads(cli.ok("history", "--vm", name, "--json").out)


def test_full_lifecycle_with_graceful_stop(cli: CLI, guest: Guest) -> None:
    created = cli.create_guest("web", guest)
    assert "created VM 'web'" in created.out
    assert status(cli, "web")["state"] == "stopped"

    started = cli.ok("start", "web", "--wait-for", READY, "--timeout", "120")
    assert f"'{READY}' appeared" in started.out
    info = status(cli, "web")
    assert info["state"] == "running" and info["qmp"] is True
    pid = info["pid"]
    assert isinstance(pid, int) and Path(f"/proc/{pid}").exists()

    shown = json.loads(cli.ok("show", "web", "--json").out)
    assert shown["accel"] in ("kvm", "tcg")
    assert shown["pid"] == pid and shown["cpus"] == 1 and shown["memory"] == 192
    assert shown["disks"][0]["format"] == "qcow2"
    assert shown["disks"][0]["virtual_size"] == 64  # MiB, as disk_size
    assert READY in Path(shown["console_log"]).read_text()
    # The guest saw the disk we created, with the size we asked for.
    assert "clan-guest: disk vda 64 MiB" in console_log(cli, "web")

    listed = json.loads(cli.ok("list", "--json").out)
    assert [(v["name"], v["state"], v["pid"]) for v in listed] == [("web", "running", pid)]

    stopped = cli.ok("stop", "web")
    assert "(acpi)" in stopped.out
    # Graceful means the guest itself handled the power button before QEMU ended.
    assert POWER_BUTTON_LINE in console_log(cli, "web")
    assert (
        not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )
    info = status(cli, "web")
    assert info["state"] == "stopped" and info["pid"] is None and info["last_stop"] == "acpi"

    events = history(cli, "web")
    assert [e["action"] for e in events] == ["stop", "start", "create"]
    assert "acpi" in events[0]["details"]
    for event in events:
        assert set(event) >= {"timestamp", "vm", "action", "user", "details"}
        assert event["vm"] == "web" and event["timestamp"].endswith("+00:00")


def test_forced_stop_is_immediate_and_skips_the_guest(cli: CLI, guest: Guest) -> None:
    cli.boot("fast", guest)
    stopped = cli.ok("stop", "fast", "--force")
    assert "(sigterm)" in stopped.out
    assert POWER_BUTTON_LINE not in console_log(cli, "fast")
    assert status(cli, "fast")["state"] == "stopped"
    assert "sigterm" in history(cli, "fast")[0]["details"]


def test_stop_ladder_falls_through_when_the_guest_ignores_the_button(
    cli: CLI, guest: Guest
) -> None:
    cli.boot("deaf", guest, append="console=ttyS0 quiet no_timer_check clan.noacpid")
    began = time.monotonic()
    stopped = cli.ok("stop", "deaf", "--timeout", "2")
    assert "(qmp-quit)" in stopped.out
    assert "did not power off within 2s" in stopped.err
    assert time.monotonic() - began < 30
    assert POWER_BUTTON_LINE not in console_log(cli, "deaf")


def test_kill_behind_our_back_is_reported_as_crash_and_start_works_again(
    cli: CLI, guest: Guest
) -> None:
    cli.boot("victim", guest)
    pid = status(cli, "victim")["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while status(cli, "victim")["state"] != "crashed":
        assert time.monotonic() < deadline, "kill -9 was never noticed"
        time.sleep(0.1)
    assert json.loads(cli.ok("list", "--json", "--filter", "crashed").out)[0]["name"] == "victim"
    assert cli.run("stop", "victim").code == 1  # nothing to stop
    events = history(cli, "victim")
    assert [e["action"] for e in events].count("crash") == 1

    cli.ok("start", "victim", "--wait-for", READY, "--timeout", "120")
    assert status(cli, "victim")["state"] == "running"
    cli.ok("stop", "victim", "--force")


def test_a_recycled_pid_is_never_running_and_never_signalled(
    cli: CLI, guest: Guest, state_dir: Path
) -> None:
    cli.boot("ghost", guest)
    cli.ok("stop", "ghost", "--force")
    # Another process now owns a pid that our state claims: same pid, different identity.
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        start = int(Path(f"/proc/{stranger.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        state_file = state_dir / "vms" / "ghost" / "state.json"
        for claimed_start in (start + 1, start):  # wrong start time; right one but not QEMU
            state = json.loads(state_file.read_text())
            state.update(status="running", pid=stranger.pid, pid_start=claimed_start)
            state_file.write_text(json.dumps(state))
            assert status(cli, "ghost")["state"] != "running"
            assert cli.run("stop", "ghost", "--force").code == 1
            assert stranger.poll() is None, "a process that is not our QEMU was signalled"
    finally:
        stranger.kill()
        stranger.wait()


def test_guest_poweroff_is_a_stop_not_a_crash(cli: CLI, guest: Guest) -> None:
    cli.boot("selfstop", guest)
    cli.run("console", "selfstop", stdin="poweroff -f\n", timeout=60)
    deadline = time.monotonic() + 30
    while status(cli, "selfstop")["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status(cli, "selfstop")["state"] == "stopped"
    assert history(cli, "selfstop")[0]["action"] == "poweroff"


def test_console_relays_stdin_and_stdout_without_a_tty(cli: CLI, guest: Guest) -> None:
    cli.boot("chatty", guest)
    result = cli.ok("console", "chatty", stdin="echo hello-$((6*7))\n", timeout=60)
    assert "hello-42" in result.out
    assert "hello-42" in console_log(cli, "chatty")
    cli.ok("stop", "chatty", "--force")


def test_wait_for_timeout_fails_and_prints_the_last_console_lines(cli: CLI, guest: Guest) -> None:
    cli.create_guest("slow", guest)
    result = cli.run("start", "slow", "--wait-for", "this never appears", "--timeout", "15")
    assert result.code == 1
    assert "error: 'this never appears' did not appear" in result.err
    assert "still running" in result.err
    assert "Traceback" not in result.err
    # The lines the guest did print are shown, so the user sees where it got to.
    assert "clan-guest:" in result.err
    events = history(cli, "slow")
    assert events[0]["action"] == "start" and events[0]["result"] == "failed"
    cli.ok("stop", "slow", "--force")


def test_invalid_operations_for_the_state_are_clear_errors(cli: CLI, guest: Guest) -> None:
    cli.create_guest("idle", guest)
    for args in (("stop", "idle"), ("console", "idle")):
        result = cli.run(*args)
        assert result.code == 1 and result.err.startswith("error: VM 'idle' is not running")
    assert cli.run("create", "idle").err.startswith("error: VM 'idle' already exists")

    cli.ok("start", "idle")
    again = cli.run("start", "idle")
    assert again.code == 1 and again.err.startswith("error: VM 'idle' is already running")
    refused = cli.run("delete", "idle")
    assert refused.code == 1 and "is running" in refused.err
    assert status(cli, "idle")["state"] == "running"
    cli.ok("stop", "idle", "--force")


def test_restart_boots_again_and_records_one_event(cli: CLI, guest: Guest) -> None:
    cli.boot("phoenix", guest)
    first = status(cli, "phoenix")["pid"]
    cli.ok("restart", "phoenix", "--wait-for", READY)
    second = status(cli, "phoenix")["pid"]
    assert first != second and status(cli, "phoenix")["state"] == "running"
    # One console log per boot: the previous boot's stays beside it, powered off gracefully.
    previous = (cli.state_dir / "vms" / "phoenix" / "console.log.1").read_text()
    assert READY in previous and POWER_BUTTON_LINE in previous
    assert console_log(cli, "phoenix").count(READY) == 1
    assert [e["action"] for e in history(cli, "phoenix")][:2] == ["restart", "start"]
    cli.ok("stop", "phoenix", "--force")


def test_delete_keeps_the_disk_unless_forced(cli: CLI, guest: Guest, state_dir: Path) -> None:
    cli.create_guest("keeper", guest)
    result = cli.ok("delete", "keeper")
    kept = Path(result.out.rsplit("kept at ", 1)[1].strip())
    assert kept.is_file() and kept.parent == state_dir / "kept-disks"
    assert cli.run("status", "keeper").code == 2
    assert not (state_dir / "vms" / "keeper").exists()

    cli.boot("goner", guest)
    pid = status(cli, "goner")["pid"]
    assert isinstance(pid, int)
    cli.ok("delete", "goner", "--force")
    assert not (state_dir / "vms" / "goner").exists()
    assert not any(p.name.startswith("goner") for p in (state_dir / "kept-disks").iterdir())
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"
    assert history(cli, "goner")[0]["action"] == "delete"


def test_interactive_console_on_a_terminal_detaches_with_ctrl_bracket(
    cli: CLI, guest: Guest
) -> None:
    cli.boot("tty", guest)
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [*cli.command(), "console", "tty"],
        env=cli.env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    seen = b""

    def read_until(text: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while text not in seen:
            assert time.monotonic() < deadline, seen
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                seen += os.read(master, 4096)

    try:
        read_until(b"press Ctrl-] to detach")
        os.write(master, b"echo tty-$((2*21))\r")
        read_until(b"tty-42")
        os.write(master, b"\x1d")
        assert proc.wait(timeout=10) == 0
        read_until(b"detached from the console")
    finally:
        proc.kill()
        os.close(master)
    # Detaching leaves the VM running.
    assert status(cli, "tty")["state"] == "running"
    cli.ok("stop", "tty", "--force")


def test_a_second_console_client_is_refused_not_left_hanging(cli: CLI, guest: Guest) -> None:
    cli.boot("busy", guest)
    first = subprocess.Popen(
        [*cli.command(), "console", "busy"],
        env=cli.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert first.stdin is not None and first.stdout is not None
    try:
        # Make sure the first client is attached: the guest answers through it.
        first.stdin.write(b"echo first-$((40+2))\n")
        first.stdin.flush()
        seen = b""
        while b"first-42" not in seen:
            chunk = first.stdout.read1(4096)
            assert chunk, "the first console client ended early"
            seen += chunk
        second = cli.run("console", "busy", stdin="", timeout=30)
        assert second.code == 1 and "already attached" in second.err
    finally:
        first.kill()
        first.wait()
    cli.ok("stop", "busy", "--force")
