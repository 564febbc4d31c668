"""Into the guest through the QEMU guest agent (the example guest runs Debian's qemu-ga):
exec, copy, status, start --wait-for-agent, and bounded errors when there is no agent."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from clan_vm_tasks import lifecycle
from clan_vm_tasks.state.store import VMPaths
from tests.conftest import CLI, READY, Guest
from tests.vmhelpers import status

pytestmark = pytest.mark.vm


def boot_with_agent(cli: CLI, name: str, guest: Guest, *extra: str, **kwargs: str) -> None:
    cli.create_guest(name, guest, *extra, **kwargs)
    started = cli.ok("start", name, "--wait-for", READY, "--wait-for-agent", "--timeout", "120")
    assert "the guest agent answered" in started.out


def test_exec_relays_output_arguments_and_exit_codes(cli: CLI, guest: Guest) -> None:
    boot_with_agent(cli, "inside", guest)
    assert status(cli, "inside")["agent"] is True
    uname = cli.ok("exec", "inside", "--", "uname", "-n")
    assert uname.out == "inside\n"
    # Every word arrives as it was given: no shell on the host re-splits it.
    words = cli.ok("exec", "inside", "--", "printf", "[%s]\n", "two words", "", "$HOME", "a;b")
    assert words.out == "[two words]\n[]\n[$HOME]\n[a;b]\n"
    failing = cli.run("exec", "inside", "--", "sh", "-c", "echo out; echo err >&2; exit 42")
    assert (failing.code, failing.out, failing.err) == (42, "out\n", "err\n")
    killed = cli.run("exec", "inside", "--", "sh", "-c", "kill -9 $$")
    assert killed.code == 128 + 9
    hung = cli.run("exec", "inside", "--timeout", "2", "--", "sleep", "60")
    assert hung.code == 1 and hung.err.startswith("error: sleep did not finish within 2s")
    missing = cli.run("exec", "inside")
    assert missing.code == 2 and "exec needs a command" in missing.err


def test_what_a_killed_command_left_in_the_channel_does_not_reach_the_next(
    cli: CLI, guest: Guest
) -> None:
    """The agent's channel outlives every command (QEMU holds its FIFOs for the whole run):
    a request whose answer nobody read and a request cut off mid-way, as a command killed at
    those moments leaves them, are dropped by the next command, which gets its own answers."""
    boot_with_agent(cli, "leftover", guest)
    paths = VMPaths(cli.state_dir / "vms" / "leftover")
    assert [stat.S_ISFIFO(os.stat(fifo).st_mode) for fifo in paths.agent_fifos] == [True, True]
    fd = os.open(paths.agent_fifos[0], os.O_WRONLY | os.O_NONBLOCK)  # QEMU relays it
    try:
        os.write(fd, b'{"execute": "guest-info"}\n{"execute": "guest-exec", "arguments": {"pa')
    finally:
        os.close(fd)
    time.sleep(1)  # the agent has answered the first: its answer waits, unread
    (paths.run / "agent-answered").unlink()  # so status asks, once, not waiting for an answer
    assert status(cli, "leftover")["agent"] is True
    assert cli.ok("exec", "leftover", "--", "echo", "mine").out == "mine\n"
    assert cli.ok("exec", "leftover", "--", "uname", "-n").out == "leftover\n"


def held_back(tracer: int) -> None:
    """Until the command TRACER runs has been stopped at a traced call for half a second
    (the one strace delays: the others stop it for microseconds)."""
    deadline, since = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        children = Path(f"/proc/{tracer}/task/{tracer}/children").read_text().split()
        stat = Path(f"/proc/{children[0]}/stat").read_text() if children else ""
        stopped = stat.rsplit(")", 1)[-1].split()[:1] == ["t"]
        since = (since or time.monotonic()) if stopped else None
        if since is not None and time.monotonic() - since > 0.5:
            return
        time.sleep(0.02)
    raise AssertionError("the command never reached the delayed call")


def test_a_vm_that_ends_while_status_asks_about_its_agent_is_told_as_it_is_now(
    cli: CLI, guest: Guest
) -> None:
    """QEMU killed between status's look at the VM and its question about the agent (the
    second QMP connect held back two seconds by strace): status says what the VM is now."""
    boot_with_agent(cli, "ending", guest)
    pid = status(cli, "ending")["pid"]
    # status connects to QMP twice: for the run state, then for the agent's port.
    argv = [
        "strace", "-qq", "-o", "/dev/null", "-e", "trace=connect",
        "-e", "inject=connect:delay_enter=4000000:when=2",
        *cli.command(), "status", "ending", "--json",
    ]  # fmt: skip
    held = subprocess.Popen(
        argv, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    held_back(held.pid)
    os.kill(pid, 9)
    out, err = held.communicate(timeout=60)
    assert (held.returncode, err) == (0, "")
    told = json.loads(out)
    assert told["state"] == "crashed" and told["pid"] is None, told


def test_status_during_a_long_exec_neither_waits_nor_writes_into_the_state(
    cli: CLI, guest: Guest
) -> None:
    """Another command's session keeps the agent busy: status tells, at once, what the agent
    did when that session began (it answered, and its port is still open), and, read-only,
    leaves the state directory as it was; asked to wait, it says it does not know."""
    boot_with_agent(cli, "busy", guest)
    long = subprocess.Popen(
        [*cli.command(), "exec", "busy", "--", "sleep", "15"],
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)  # the exec has its session
        before = sorted(str(p) for p in cli.state_dir.rglob("*"))
        began = time.monotonic()
        during = status(cli, "busy")
        took = time.monotonic() - began
        assert (during["state"], during["agent"]) == ("running", True)
        assert during["agent_answered_at"] is not None
        assert took < 5, took
        waited = json.loads(
            cli.ok("status", "busy", "--json", "--wait-agent", "--timeout", "1").out
        )
        assert waited["agent"] is None and waited["agent_answered_at"] is not None
        assert sorted(str(p) for p in cli.state_dir.rglob("*")) == before
        assert long.poll() is None  # the exec was still running all along
    finally:
        long.wait(60)
    assert status(cli, "busy")["agent"] is True


def test_status_takes_an_answer_at_its_word_only_while_the_agent_holds_its_port(
    cli: CLI, guest: Guest
) -> None:
    """An agent that answered in this run is not asked again while its port stays open;
    once it has gone, status says so at once, and a new run's agent is asked anew."""
    boot_with_agent(cli, "gone", guest)
    first = status(cli, "gone")
    assert first["agent"] is True and first["agent_answered_at"] is not None
    kill = "(sleep 1; kill $(cat /run/qemu-ga.pid)) >/dev/null 2>&1 &"
    cli.ok("exec", "gone", "--", "sh", "-c", kill)
    deadline = time.monotonic() + 30
    while (now := status(cli, "gone"))["agent"] is not False:
        assert time.monotonic() < deadline, now
        time.sleep(0.5)
    assert now["agent_answered_at"] is None  # it failed: nothing is taken at its word
    assert cli.ok("status", "gone").out.endswith("no guest agent answering\n")
    cli.ok("stop", "gone")
    cli.ok("start", "gone", "--wait-for", READY, "--timeout", "120")
    deadline = time.monotonic() + 60
    while (again := status(cli, "gone"))["agent"] is not True:  # asked, not remembered
        assert time.monotonic() < deadline, again
        time.sleep(0.2)
    started = datetime.fromisoformat(again["started_at"]).replace(microsecond=0)
    assert datetime.fromisoformat(again["agent_answered_at"]) >= started, again


def test_output_beyond_the_agents_cap_is_never_cut_silently(cli: CLI, guest: Guest) -> None:
    boot_with_agent(cli, "chatty", guest)
    big = cli.run("exec", "chatty", "--timeout", "120", "--", "head", "-c", "17000000", "/dev/zero")
    assert big.code == 0
    assert len(big.out) == 16 << 20  # what the agent kept
    assert "warning: the guest agent cut the command's output" in big.err


def test_copy_is_byte_exact_and_keeps_the_permission_bits(
    cli: CLI, guest: Guest, tmp_path: Path
) -> None:
    boot_with_agent(cli, "files", guest)
    data = os.urandom(5 << 20) + bytes(range(256))
    source = tmp_path / "blob"
    source.write_bytes(data)
    source.chmod(0o750)
    cli.ok("copy", str(source), "files:/root/")
    listing = cli.ok("exec", "files", "--", "ls", "-l", "/root/blob").out
    assert listing.startswith("-rwxr-x---") and str(len(data)) in listing
    back = tmp_path / "back"
    back.mkdir()
    cli.ok("copy", "files:/root/blob", str(back))
    assert (back / "blob").read_bytes() == data
    absent = cli.run("copy", "files:/no/such/file", str(back / "absent"))
    assert absent.code == 1 and absent.err.startswith("error: the guest agent refused")
    assert not (back / "absent").exists() and not list(back.glob(".*"))
    for args in (("copy", str(source), str(back)), ("copy", "files:/a", "files:/b")):
        wrong = cli.run(*args)
        assert wrong.code == 2 and "exactly one side" in wrong.err


def test_without_an_agent_errors_are_bounded_single_lines(cli: CLI, guest: Guest) -> None:
    cli.create_guest("mute", guest, append="console=ttyS0 quiet no_timer_check clan.noagent")
    cli.ok("start", "mute", "--wait-for", READY, "--timeout", "120")
    began = time.monotonic()
    result = cli.run("exec", "mute", "--timeout", "5", "--", "true")  # waits that long for it
    assert result.code == 1 and 5 <= time.monotonic() - began < 30
    assert result.err.startswith("error: the guest agent of VM 'mute' does not answer")
    assert "clan-vm-manager start mute --wait-for-agent" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert status(cli, "mute")["agent"] is False
    cli.ok("stop", "mute", "--force")
    stopped = cli.run("exec", "mute", "--", "true")
    assert stopped.code == 1 and stopped.err.startswith("error: VM 'mute' is not running")
    assert status(cli, "mute")["agent"] is None


def test_start_waits_for_the_agent_or_says_it_did_not_answer(cli: CLI, guest: Guest) -> None:
    cli.create_guest("slowagent", guest, append="console=ttyS0 quiet no_timer_check clan.noagent")
    result = cli.run("start", "slowagent", "--wait-for-agent", "--timeout", "15")
    assert result.code == 1 and "does not answer" in result.err and "still running" in result.err
    assert status(cli, "slowagent")["state"] == "running"
    cli.ok("stop", "slowagent", "--force")


def test_a_vm_without_an_agent_channel(cli: CLI, guest: Guest) -> None:
    cli.create_guest("plain", guest)
    path = cli.state_dir / "vms" / "plain" / "config.json"  # agent = false, as Nix sets it
    path.write_text(json.dumps({**json.loads(path.read_text()), "agent": False}))
    cli.ok("start", "plain", "--wait-for", READY, "--timeout", "120")
    result = cli.run("exec", "plain", "--", "true")
    assert result.code == 1 and "has no guest agent channel" in result.err
    assert status(cli, "plain")["agent"] is False
    cli.ok("stop", "plain", "--force")


def test_the_python_api_runs_commands_and_copies_files(
    state_dir: Path, guest: Guest, tmp_path: Path
) -> None:
    settings = lifecycle.Settings(state_dir=state_dir, accel="tcg")
    store = lifecycle.open_store(settings)
    config = lifecycle.VMConfig(
        name="api", cpus=1, memory=192, disk_size=16, kernel=guest.kernel, initrd=guest.initrd,
        append="console=ttyS0 quiet no_timer_check",
    )  # fmt: skip
    lifecycle.create(store, config)
    lifecycle.start(store, settings, "api", wait_for=READY, timeout=120, wait_for_agent=True)
    result = lifecycle.exec(store, "api", ["sh", "-c", "echo hello; exit 5"])
    assert (result.exit_code, result.stdout, result.stderr) == (5, b"hello\n", b"")
    source = tmp_path / "in.txt"
    source.write_text("through the agent\n")
    lifecycle.copy_in(store, "api", source, "/tmp/in.txt")
    lifecycle.copy_out(store, "api", "/tmp/in.txt", tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "through the agent\n"
    lifecycle.stop(store, "api", force=True)
