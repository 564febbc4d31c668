"""Running commands in a running guest through its agent: exec (with stdin), ping, waiting
for the agent after a boot.

Written against ``Machine.agent`` (any backend) through ``vm.agent``, which checks every
reply. Every wait is bounded; a guest without an agent is an error after the wait, never a
hang.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from clan_vm_tasks.errors import (
    AgentError,
    AgentInvalidReply,
    AgentUnavailable,
    Busy,
    ClanVMError,
    GuestCommandFailed,
)
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import dataport, guest_temp, machines, reconcile
from clan_vm_tasks.vm.agent import Agent, last_answer, session

AGENT_WAIT = 10.0  # how long copy and ssh wait for an agent that does not answer yet
# Standard input larger than one agent message goes to a file in the guest first; this runs
# the command with that file as its stdin (removed once open) and exits 127 like any shell
# when the command does not exist.
FROM_SPOOL = 'exec 0<"$0" || exit 126; rm -f -- "$0"; exec "$@"'
_NOT_FOUND = "No such file or directory"
_NOT_RUNNABLE = "Permission denied"


@dataclass(frozen=True)
class ExecResult:
    exit_code: int  # 128 + N for a command killed by signal N
    stdout: bytes
    stderr: bytes
    truncated: bool  # the agent caps captured output (16 MiB in QEMU 7.2)


def ping(store: Store, name: str, wait: float = 0.0) -> tuple[bool | None, float | None]:
    """Whether the agent answers, and when it last did in this run of the VM (seconds since
    the epoch, or None). A guest whose agent has not opened its port is told at once; one
    whose agent answered earlier in this run and still holds its port open is taken at its
    word without asking again (no session, no wait for another command's), unless to WAIT.
    Else the agent is asked, waiting up to WAIT seconds for it. None when the VM is not
    running, or when another command's session with the agent does not end within WAIT (a
    long exec or copy): it is not known, and ``status`` does not wait for it."""
    state = reconcile.current(store, name)
    if state.status not in reconcile.ACTIVE:
        return None, None
    if store.read_config(name).get("agent", True) is False:
        return False, None
    if wait <= 0:
        answered = last_answer(store, name, state)
        if answered is not None and machines.machine(store, name, state).agent_port_open():
            return True, answered
    try:
        with session(store, name, wait=wait, queue=wait, tidy=False) as agent:
            agent.ping()
    except Busy:
        return None, last_answer(store, name, state)
    except (AgentUnavailable, AgentError, AgentInvalidReply):
        return False, last_answer(store, name, state)
    return True, time.time()


def wait_for_agent(store: Store, name: str, timeout: float) -> float:
    """Wait until the agent answers; the seconds it took."""
    began = time.monotonic()
    with session(store, name, wait=timeout, hint="") as agent:
        agent.ping(timeout=max(1.0, timeout - (time.monotonic() - began)))
    return time.monotonic() - began


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    parts, got = [], 0
    while got < size and (part := stream.read(size - got)):
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _start(agent: Agent, argv: list[str], stdin: bytes | None) -> int:
    """The guest pid of ARGV, started; a command that cannot be run exits as a shell's would."""
    try:
        return agent.exec_start(argv, stdin)
    except AgentError as error:
        text = str(error)
        if _NOT_FOUND in text or _NOT_RUNNABLE in text:
            missing = _NOT_FOUND in text
            what = "not found" if missing else "cannot be run (permission denied)"
            raise GuestCommandFailed(
                f"{argv[0]}: command {what} in VM '{agent.name}'", 127 if missing else 126
            ) from None
        raise


def _run_quietly(agent: Agent, argv: list[str], timeout: float) -> ExecResult:
    return _wait(agent, argv, _start(agent, argv, None), timeout)


def _spooled(agent: Agent, argv: list[str], chunks: Iterator[bytes]) -> int:
    """Start ARGV with CHUNKS as its stdin, written to a file in the guest first (the agent
    takes a command's input in one message only); the command's shell removes it."""
    with guest_temp.recorded(agent, "/tmp") as temporary:
        try:
            made = _run_quietly(agent, ["mktemp", f"/tmp/{temporary.template('input')}"], 30)
        except GuestCommandFailed:
            raise ClanVMError(
                f"VM '{agent.name}' has no mktemp: input larger than {agent.write_chunk} bytes "
                "cannot reach a command there through its agent"
            ) from None
        path = made.stdout.decode(errors="replace").strip()
        if made.exit_code != 0 or not path.startswith("/") or "\n" in path:
            raise ClanVMError(
                f"could not make a file in VM '{agent.name}' for the command's input "
                f"(mktemp exited {made.exit_code})"
            )
        _write(agent, temporary, path, chunks)
        return _start(agent, ["/bin/sh", "-c", FROM_SPOOL, path, *argv], None)


def _write(
    agent: Agent, temporary: guest_temp.Temporary, path: str, chunks: Iterator[bytes]
) -> None:
    """CHUNKS into the guest file PATH (made there already): through the data port where
    there is one, else through the agent."""
    # No deadline but the data port's own: input from a pipe may come slowly.
    with dataport.to_file(agent, path, float("inf")) as port:
        if port is not None:
            for chunk in chunks:
                port.write(chunk)
            port.finish()
            return
    handle = temporary.holds(agent.open(path, "w"))
    try:
        for chunk in chunks:
            agent.write(handle, chunk)
    finally:
        agent.close(handle)


def _wait(agent: Agent, argv: list[str], pid: int, timeout: float) -> ExecResult:
    status = agent.exited(pid, time.monotonic() + timeout)
    if status is None:
        raise ClanVMError(
            f"{argv[0]} did not finish within {timeout:g}s (the guest agent cannot stop "
            "it: it may still run in the guest)"
        )
    return ExecResult(status.exit_code, status.stdout, status.stderr, status.truncated)


def run(
    agent: Agent, argv: list[str], timeout: float, stdin: bytes | BinaryIO | None = None
) -> ExecResult:
    """Run ARGV in the guest and wait (up to TIMEOUT) for it to exit. STDIN is read in
    chunks, so it may be larger than memory."""
    stream = io.BytesIO(stdin) if isinstance(stdin, bytes) else stdin
    first = _read_up_to(stream, agent.write_chunk) if stream is not None else b""
    more = _read_up_to(stream, agent.write_chunk) if stream is not None and first else b""
    if not more:
        pid = _start(agent, argv, first or None)
    else:
        assert stream is not None

        def chunks() -> Iterator[bytes]:
            yield first
            yield more
            while chunk := _read_up_to(stream, agent.write_chunk):
                yield chunk

        pid = _spooled(agent, argv, chunks())
    return _wait(agent, argv, pid, timeout)


def execute(
    store: Store,
    name: str,
    argv: list[str],
    timeout: float,
    stdin: bytes | BinaryIO | None = None,
    wait: float | None = None,
) -> ExecResult:
    """Run ARGV in VM NAME's guest; wait up to WAIT (default: TIMEOUT) for its agent."""
    with session(store, name, wait=timeout if wait is None else wait) as agent:
        return run(agent, argv, timeout, stdin)
