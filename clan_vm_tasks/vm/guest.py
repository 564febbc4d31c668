"""Reaching into a running guest through the QEMU guest agent: ping, exec, copy.

Written against ``Machine.agent`` (any backend). The agent serves one client at a
time, so sessions of the tool on one VM are serialised by a lock of their own;
every wait is bounded, and a guest without an agent is an error after a short wait,
never a hang.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clan_vm_tasks.backends.base import GuestAgent
from clan_vm_tasks.errors import AgentError, AgentUnavailable, ClanVMError, StateConflict
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import machines, reconcile

CHUNK = 1 << 20  # bytes per guest-file-read/-write: well under the agent's message limits
PING_TIMEOUT = 1.0
AGENT_WAIT = 10.0  # how long exec and copy wait for an agent that does not answer yet
POLL = 0.05


@dataclass(frozen=True)
class ExecResult:
    exit_code: int  # 128 + N for a command killed by signal N
    stdout: bytes
    stderr: bytes
    truncated: bool  # the agent caps captured output (16 MiB in QEMU 7.2)


def _agent_enabled(store: Store, name: str) -> bool:
    return store.read_config(name).get("agent", True) is not False


@contextlib.contextmanager
def session(store: Store, name: str, wait: float = AGENT_WAIT) -> Iterator[GuestAgent]:
    """A session with the agent of running VM NAME, waiting up to WAIT seconds for it."""
    store.require(name)
    state = reconcile.current(store, name)
    if state.status not in reconcile.ACTIVE:
        raise StateConflict(f"VM '{name}' is not running (it is {state.status})")
    if not _agent_enabled(store, name):
        raise ClanVMError(f"VM '{name}' has no guest agent channel (agent = false)")
    machine = machines.machine(store, name, state)
    files.private_dir(store.locks)
    lock = store.locks / f"{name}.agent"
    with (
        files.locked(lock, f"the guest agent of '{name}'", wait + 60),
        contextlib.ExitStack() as stack,
    ):
        deadline = time.monotonic() + wait
        while True:
            try:
                probe = max(PING_TIMEOUT, min(PING_TIMEOUT * 2, wait))
                agent = stack.enter_context(machine.agent(probe))
                break
            except AgentUnavailable as error:
                if time.monotonic() >= deadline:
                    raise AgentUnavailable(
                        f"the guest agent of VM '{name}' does not answer ({error}); is "
                        "qemu-guest-agent running in the guest?"
                    ) from None
                time.sleep(0.2)
        yield agent


def ping(store: Store, name: str, wait: float = 0.0) -> bool | None:
    """Whether the agent answers (None when the VM is not running), waiting up to WAIT
    seconds for it."""
    state = reconcile.current(store, name)
    if state.status not in reconcile.ACTIVE or not _agent_enabled(store, name):
        return None if state.status not in reconcile.ACTIVE else False
    try:  # no wait: a guest whose agent has not opened its port is told at once
        with session(store, name, wait=wait):
            pass  # a session begins with the agent answering (a sync, or a guest-ping)
    except (AgentUnavailable, AgentError):
        return False
    return True


def wait_for_agent(store: Store, name: str, timeout: float) -> float:
    """Wait until the agent answers; the seconds it took."""
    began = time.monotonic()
    with session(store, name, wait=timeout) as agent:
        agent.execute("guest-ping", timeout=max(1.0, timeout - (time.monotonic() - began)))
    return time.monotonic() - began


def _decode(data: Any) -> bytes:
    return base64.b64decode(data) if isinstance(data, str) else b""


def run(
    agent: GuestAgent, argv: list[str], timeout: float, stdin: bytes | None = None
) -> ExecResult:
    """Run ARGV in the guest and wait (up to TIMEOUT) for it to exit."""
    arguments: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
    if stdin is not None:
        arguments["input-data"] = base64.b64encode(stdin).decode()
    pid = agent.execute("guest-exec", arguments)["pid"]
    deadline = time.monotonic() + timeout
    pause = POLL / 16  # a short command is done in a few ms: look again soon, then less often
    while True:
        # The reply carries all captured output once it exited: give it time to arrive.
        status = agent.execute(
            "guest-exec-status", {"pid": pid}, max(30.0, deadline - time.monotonic())
        )
        if status.get("exited"):
            break
        if time.monotonic() >= deadline:
            raise ClanVMError(
                f"{argv[0]} did not finish within {timeout:g}s (the guest agent cannot stop "
                "it: it may still run in the guest)"
            )
        time.sleep(pause)
        pause = min(pause * 2, POLL)
    signal = status.get("signal")
    return ExecResult(
        exit_code=128 + int(signal) if signal else int(status.get("exitcode", 0)),
        stdout=_decode(status.get("out-data")),
        stderr=_decode(status.get("err-data")),
        truncated=bool(status.get("out-truncated") or status.get("err-truncated")),
    )


def execute(
    store: Store, name: str, argv: list[str], timeout: float, stdin: bytes | None = None
) -> ExecResult:
    with session(store, name) as agent:
        return run(agent, argv, timeout, stdin)


@contextlib.contextmanager
def _opened(agent: GuestAgent, path: str, mode: str) -> Iterator[int]:
    handle = int(agent.execute("guest-file-open", {"path": path, "mode": mode}))
    try:
        yield handle
    finally:
        with contextlib.suppress(ClanVMError):
            agent.execute("guest-file-close", {"handle": handle})


def copy_in(store: Store, name: str, source: Path, target: str) -> int:
    """Copy the host file SOURCE to TARGET in the guest, in chunks; then give it SOURCE's
    permission bits (with chmod in the guest, if it has one). Returns the bytes copied."""
    size = 0
    with session(store, name) as agent, source.open("rb") as data:
        with _opened(agent, target, "wb") as handle:
            while chunk := data.read(CHUNK):
                encoded = base64.b64encode(chunk).decode()
                agent.execute("guest-file-write", {"handle": handle, "buf-b64": encoded}, 60)
                size += len(chunk)
            agent.execute("guest-file-flush", {"handle": handle})
        mode = f"{source.stat().st_mode & 0o7777:o}"
        with contextlib.suppress(ClanVMError):  # a guest without chmod keeps the agent's mode
            run(agent, ["chmod", mode, target], timeout=30)
    return size


def _chunks(agent: GuestAgent, path: str) -> Iterator[bytes]:
    """The content of PATH in the guest, CHUNK bytes at a time."""
    with _opened(agent, path, "rb") as handle:
        while True:
            read = agent.execute("guest-file-read", {"handle": handle, "count": CHUNK}, 60)
            chunk = _decode(read.get("buf-b64"))
            if chunk:
                yield chunk
            if read.get("eof") or not chunk:
                return


def read_small(agent: GuestAgent, path: str) -> bytes:
    return b"".join(_chunks(agent, path))


def copy_out(store: Store, name: str, source: str, target: Path) -> int:
    """Copy SOURCE in the guest to the host file TARGET, in chunks (written whole or not
    at all). Returns the bytes copied."""
    partial = target.with_name(f".{target.name}.partial")
    size = 0
    try:
        with session(store, name) as agent, partial.open("wb") as out:
            for chunk in _chunks(agent, source):
                out.write(chunk)
                size += len(chunk)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return size


def interfaces(store: Store, name: str) -> list[str]:
    """The guest's IPv4 addresses, loopback excepted."""
    with session(store, name) as agent:
        found = agent.execute("guest-network-get-interfaces")
    addresses = []
    for interface in found if isinstance(found, list) else []:
        if interface.get("name") == "lo":
            continue
        for address in interface.get("ip-addresses") or []:
            if address.get("ip-address-type") == "ipv4":
                addresses.append(str(address["ip-address"]))
    return addresses
