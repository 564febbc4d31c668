"""``exec`` handed to the command server (``cli.handoff``): the same command as run in its
client, with the client's environment and streams; a killed client takes its worker with
it, signals reach it, a killed server costs nothing, a changed package is never served old
code, and a socket in a directory someone else controls is never used."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clan_vm_tasks.cli import handoff
from tests.conftest import CLI, READY, Guest, Result, kill_leftover_qemu

pytestmark = [pytest.mark.vm, pytest.mark.xdist_group("command-server")]
ROOT = Path(__file__).resolve().parents[2]
# A connect, or a file opened (the agent's FIFOs: agent.in, agent.out), that succeeded.
REACHED = re.compile(r'(?:sun_path=|openat\(AT_FDCWD, )"([^"]+)".*= \d+$', re.MULTILINE)


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory, guest: Guest) -> Iterator[CLI]:
    cli = CLI(tmp_path_factory.mktemp("served") / "state")
    try:
        cli.create_guest("talk", guest)
        cli.ok("start", "talk", "--wait-for", READY, "--timeout", "120")
        cli.ok("status", "talk", "--wait-agent", "--timeout", "60")
        yield cli
    finally:
        kill_leftover_qemu(cli.state_dir)


class Reached(list[str]):
    """The sockets and files a command's own process reached."""

    def handed(self) -> list[str]:
        """The command servers it connected to."""
        return [path for path in self if "/cmd-" in path and path.endswith(".sock")]

    def agent(self) -> bool:
        """Whether it talked to a guest agent itself."""
        return any(path.endswith("/agent.in") for path in self)


def traced(
    cli: CLI, *args: str, stdin: str | None = None, files: int | None = None, **env: str
) -> tuple[Result, Reached]:
    """The command's result, and what its own process reached (strace without -f: a server
    it starts is not traced)."""
    log = cli.state_dir.parent / f"connects-{time.monotonic_ns()}"
    proc = subprocess.run(
        ["strace", "-qq", "-o", str(log), "-e", "trace=connect,openat", *cli.command(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**cli.env, **env},
        timeout=120,
        check=False,
        # FILES: another limit on open files, so another context (``handoff.context``)
        preexec_fn=functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE, (files, files))
        if files
        else None,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr), Reached(
        REACHED.findall(log.read_text())
    )


def server_pid(path: str) -> int | None:
    """The pid of the server listening on PATH (from the socket's peer credentials)."""
    with socket.socket(socket.AF_UNIX) as conn:
        try:
            conn.connect(path)
        except OSError:
            return None
        return handoff.peer(conn)[0]


def served(cli: CLI, files: int | None = None, **env: str) -> tuple[str, int]:
    """Run an exec until one is handed to a server: its socket and pid."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result, reached = traced(cli, "exec", "talk", "--", "true", files=files, **env)
        assert result.code == 0, result.err
        if not reached.agent():
            (sock,) = reached.handed()
            pid = server_pid(sock)
            assert pid is not None
            return sock, pid
        time.sleep(0.3)
    raise AssertionError("no exec was handed to a command server")


def worker(server: int, output: int) -> int | None:
    """The server's worker whose standard output is OUTPUT (a file or pipe of ours: other
    tests' commands run in the same server)."""
    try:
        children = Path(f"/proc/{server}/task/{server}/children").read_text().split()
    except OSError:
        return None
    ours = os.fstat(output)
    for pid in children:
        try:
            theirs = os.stat(f"/proc/{pid}/fd/1")
        except OSError:
            continue
        if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
            return int(pid)
    return None


def running(server: int, output: int) -> Callable[[], bool]:
    return lambda: worker(server, output) is not None


def started(
    cli: CLI, server: int | None, *argv: str, orphaned: bool = False, **env: str
) -> subprocess.Popen[str]:
    """``exec talk -- ARGV`` in the background, in a process group of its own as a shell's
    job is (so ^Z can stop it), or ORPHANED (a session of its own, where ^Z stops nothing);
    with SERVER, once a worker of it runs it."""
    proc = subprocess.Popen(
        [*cli.command(), "exec", "talk", "--", *argv],
        env={**cli.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        process_group=None if orphaned else 0,
        start_new_session=orphaned,
    )
    assert proc.stdout is not None
    if server is not None:
        assert until(running(server, proc.stdout.fileno())), "no worker ran the exec"
    return proc


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("T")


def until(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module", autouse=True)
def needs_strace() -> None:
    if shutil.which("strace") is None:
        pytest.skip("needs strace")


def test_a_handed_exec_is_the_command_run_in_its_client(booted: CLI, tmp_path: Path) -> None:
    # A server started by a command of another state directory (another environment).
    other = CLI(tmp_path / "other")
    assert other.run("exec", "talk", "--", "true").code != 0  # no such VM there
    sock, _ = served(booted)
    text = "".join(f"line {i} {'x' * (i % 97)}\n" for i in range(40000))  # ~2.2 MB: spooled
    cases: list[tuple[tuple[str, ...], str | None]] = [
        (("exec", "talk", "--", "sh", "-c", "echo out; echo err >&2; exit 3"), None),
        (("exec", "talk", "--", "sh", "-c", "kill -9 $$"), None),
        (("exec", "talk", "--", "cat"), "one\ntwo\n"),
        (("exec", "talk", "--", "sha256sum"), text),
        (("exec", "talk"), None),
        (("exec", "nothere", "--", "true"), None),
        (("exec", "talk", "--tty", "--", "sh"), None),
    ]
    for args, stdin in cases:
        here, reached = traced(booted, *args, stdin=stdin, CLAN_VM_SERVER="off")
        assert reached.handed() == []
        handed, reached = traced(booted, *args, stdin=stdin)
        assert reached.handed() == [sock] and not reached.agent(), (args, reached)
        assert (handed.code, handed.out, handed.err) == (here.code, here.out, here.err), args
    assert here.code == 2 and here.err.startswith("error: ")
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert traced(booted, "exec", "talk", "--", "sha256sum", stdin=text)[0].out.startswith(digest)


def test_the_worker_loads_nothing(booted: CLI, tmp_path: Path) -> None:
    """Everything an exec imports is loaded in the server already."""
    _, server = served(booted)
    log = tmp_path / "server.trace"
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-p", str(server), "-o", str(log), "-e", "trace=openat"]
    )
    try:
        attached = f"TracerPid:\t{tracer.pid}\n"
        assert until(lambda: attached in Path(f"/proc/{server}/status").read_text())
        assert booted.ok("exec", "talk", "--", "echo", "traced").out == "traced\n"
    finally:
        tracer.terminate()  # detaches
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
    opened = re.findall(r'openat\([^"]*"([^"]+)"', log.read_text())
    assert any(path.endswith("state.json") for path in opened)  # it did trace the worker
    assert [p for p in opened if p.endswith((".py", ".pyc", ".so"))] == []


@pytest.mark.parametrize("when", [1, 2])
def test_a_killed_client_takes_its_worker_with_it(booted: CLI, when: int) -> None:
    _, server = served(booted)
    # Killed at its first recv (the worker is made, its pid on the way) or its second (it has
    # the pid and waits for the exit code).
    # (Its output goes to a file: the worker holds what it was given until it ends.)
    with open(booted.state_dir.parent / f"killed-{when}.out", "wb") as out:
        killed = subprocess.run(
            [
                "strace", "-qq", "-o", "/dev/null", "-e", "trace=recvfrom",
                "-e", f"inject=recvfrom:signal=SIGKILL:when={when}",
                *booted.command(), "exec", "talk", "--", "sleep", "30",
            ],
            env=booted.env, stdout=out, stderr=out, timeout=60, check=False,
        )  # fmt: skip
        assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), killed
        assert until(lambda: worker(server, out.fileno()) is None, 5)  # not 30 s later
    began = time.monotonic()
    assert booted.ok("exec", "talk", "--", "echo", "after").out == "after\n"
    assert time.monotonic() - began < 10  # nothing held the VM


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_client_reaches_the_command(booted: CLI, signum: int) -> None:
    _, server = served(booted)
    outcomes = []
    for mode in ("off", "on"):
        proc = started(booted, server if mode == "on" else None, "sleep", "30", CLAN_VM_SERVER=mode)
        time.sleep(2)  # the command runs in the guest
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        outcomes.append((proc.returncode, out, err))
    assert outcomes[0] == outcomes[1]  # and the worker ended: its output reached its end


def test_a_killed_server_leaves_its_commands_to_finish(booted: CLI) -> None:
    _, server = served(booted)
    proc = started(booted, server, "sh", "-c", "sleep 2; echo done")
    os.kill(server, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (0, "done\n", "")
    # The next exec runs (in its client, or in a server another test's exec started since).
    assert booted.ok("exec", "talk", "--", "echo", "again").out == "again\n"
    assert served(booted)[1] != server


class Wrapped(CLI):
    def __init__(self, state_dir: Path, script: Path) -> None:
        super().__init__(state_dir)
        self.script = script

    def command(self, entry: str = "clan-vm-manager") -> list[str]:
        return [str(self.script)]


def test_a_changed_package_is_not_served_old_code(booted: CLI, tmp_path: Path) -> None:
    """A copy of the package, run by a script that puts it on its own import path (as
    nixpkgs' wrappers do), gets a server of its own, which imports from there too."""
    copy = tmp_path / "src"
    shutil.copytree(
        ROOT / "clan_vm_tasks", copy / "clan_vm_tasks", ignore=shutil.ignore_patterns("__pycache__")
    )
    script = tmp_path / "bin" / "clan-vm-manager"
    script.parent.mkdir()
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(1, {str(copy)!r})\n"
        "from clan_vm_tasks.cli import entry\nentry()\n"
    )
    script.chmod(0o755)
    wrapped = Wrapped(booted.state_dir, script)
    # Handed at all: a server that imported the installed package instead would listen on
    # that one's socket, and this command would find none on its own.
    sock, server = served(wrapped)
    assert sock != served(booted)[0]
    with open(copy / "clan_vm_tasks" / "cli" / "parse.py", "a") as f:
        f.write("# changed\n")
    result, reached = traced(wrapped, "exec", "talk", "--", "echo", "fresh")
    assert result.out == "fresh\n"
    assert reached.handed() == [sock] and reached.agent()  # told it is stale; ran it itself
    assert until(lambda: not Path(f"/proc/{server}").exists(), 5)


def test_a_client_elsewhere_gets_a_server_of_its_own(booted: CLI) -> None:
    """Other limits (or another cgroup, namespace, privileges): never served from here."""
    sock, server = served(booted)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    theirs, other = served(booted, files=soft // 2)
    assert (theirs, other) != (sock, server)
    assert traced(booted, "exec", "talk", "--", "echo", "x", files=soft // 2)[1].handed() == [
        theirs
    ]


def test_a_bad_request_does_not_end_the_server(booted: CLI) -> None:
    sock, server = served(booted)
    for request in (
        b"\xff\xff\xff\xff",  # too long
        b"\x00\x00\x00\x10\xffnot\x00utf-8\x00\x00",  # cut short, and not the fields
        b"\x00\x00\x00\x05\xff\x00\x001x",  # malformed, no descriptors
    ):
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(sock)
            conn.sendall(request)
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(10)
            assert conn.recv(64) in (b"", b"stale\n")
    assert served(booted) == (sock, server)


def test_a_closed_output_is_closed_for_the_worker_too(booted: CLI) -> None:
    served(booted)
    outcomes = []
    for mode in ("off", "on"):
        closed = subprocess.run(
            ["bash", "-c", 'exec "$@" >&-', "-", *booted.command(), "exec", "talk", "--", "echo"],
            env={**booted.env, "CLAN_VM_SERVER": mode},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        outcomes.append(
            (closed.returncode, closed.err if hasattr(closed, "err") else closed.stderr)
        )
    assert outcomes[0] == outcomes[1]


def test_a_stopped_client_leaves_its_worker_running(booted: CLI) -> None:
    """^Z (SIGTSTP) stops the client only: a stopped worker could not see its client killed
    while stopped. The worker finishes; the client, continued, reports it."""
    _, server = served(booted)
    proc = started(booted, server, "sh", "-c", "sleep 2; echo done")
    assert proc.stdout is not None
    found = worker(server, proc.stdout.fileno())
    assert found is not None
    proc.send_signal(signal.SIGTSTP)
    assert until(lambda: stopped(proc.pid))
    assert not stopped(found)
    assert until(lambda: not Path(f"/proc/{found}").exists(), 30)  # it finished
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (0, "done\n", "")


def test_a_client_that_cannot_stop_leaves_its_worker_running(booted: CLI) -> None:
    """Without a shell (an orphaned process group) ^Z stops no command: nor its worker."""
    _, server = served(booted)
    proc = started(booted, server, "sh", "-c", "sleep 2; echo done", orphaned=True)
    assert proc.stdout is not None
    found = worker(server, proc.stdout.fileno())
    assert found is not None
    proc.send_signal(signal.SIGTSTP)
    out, err = proc.communicate(timeout=30)  # not held up: nobody sends a SIGCONT
    assert (proc.returncode, out, err) == (0, "done\n", "")
