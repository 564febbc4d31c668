"""The guest agent's commands as the tool uses them, each reply checked against the shape that
command answers with: types, base64, exit codes and signals in range, no more data than asked
for. The guest is not trusted, so anything else is an ``AgentInvalidReply`` naming the VM
(one line, exit 1), never a crash of ours.

``session`` opens one, waiting for an agent that is not up yet (a guest still booting);
sessions of the tool on one VM are serialised by a lock of their own, since the agent serves
one client at a time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from clan_vm_tasks.backends.base import GuestAgent, Machine
from clan_vm_tasks.errors import AgentInvalidReply, AgentUnavailable, ClanVMError, StateConflict
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import Store, VMState
from clan_vm_tasks.vm import guest_temp, machines, reconcile

PING_TIMEOUT = 1.0
POLL_QUICK = 0.003  # seconds between looks at a command in its first QUICK seconds
QUICK = 0.1  # seconds within which most commands are done (`true` takes some 20 ms under TCG)
POLL_MAX = 0.5
EXEC_OUTPUT_CAP = 16 << 20  # what qemu-ga keeps of each stream of a command
_INT_MAX = (1 << 63) - 1
T = TypeVar("T")


@dataclass(frozen=True)
class ExecStatus:
    exited: bool
    exit_code: int  # 128 + N for a command killed by signal N; 0 while it runs
    stdout: bytes
    stderr: bytes
    truncated: bool  # the agent cut a stream at EXEC_OUTPUT_CAP


@dataclass(frozen=True)
class Address:
    interface: str
    address: str  # as the guest spelled it: to be parsed, never passed on as it is
    prefix: int | None


def _int(value: Any, what: str, low: int = 0, high: int = _INT_MAX) -> int:
    if type(value) is not int or not low <= value <= high:  # bool is no int here
        raise AgentInvalidReply(f"{what} is {_shown(value)}, not a number from {low} to {high}")
    return value


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise AgentInvalidReply(f"{what} is {_shown(value)}, not true or false")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AgentInvalidReply(f"{what} is {_shown(value)}, not an object")
    return value


def _bytes(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, str):
        raise AgentInvalidReply(f"{what} is {_shown(value)}, not base64 text")
    if len(value) > (limit + 2) // 3 * 4:
        raise AgentInvalidReply(f"{what} holds more than the {limit} bytes asked for")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AgentInvalidReply(f"{what} is not valid base64") from None


def _shown(value: Any) -> str:
    from clan_vm_tasks.backends.agent_wire import printable

    kind = "null" if value is None else type(value).__name__
    if isinstance(value, (dict, list)):
        return f"a JSON {kind}"
    return f"{printable(repr(value), 40)} ({kind})"


class Agent:
    """A session with the guest agent of VM NAME, speaking in checked, typed values."""

    def __init__(
        self,
        raw: GuestAgent,
        name: str,
        records: Path | None = None,
        machine: Machine | None = None,
    ) -> None:
        self._raw = raw
        self.name = name
        self.records = records  # where its temporary files in the guest are written ahead
        self.machine = machine  # the VM, for what goes beside the agent (``dataport``)
        # Bytes of file data one command or reply carries on the way to this agent.
        self.read_chunk, self.write_chunk = raw.read_chunk, raw.write_chunk

    def call(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        try:
            return self._raw.execute(command, arguments, timeout)
        except AgentInvalidReply as error:
            raise AgentInvalidReply(error.detail, self.name) from None

    def _checked(self, command: str, check: Callable[[], T]) -> T:
        """CHECK(...) raising AgentInvalidReply: the same, naming the VM and the command."""
        try:
            return check()
        except AgentInvalidReply as error:
            raise AgentInvalidReply(f"{command}: {error.detail}", self.name) from None

    def ping(self, timeout: float = PING_TIMEOUT) -> None:
        self.call("guest-ping", timeout=timeout)

    def exec_start(self, argv: list[str], stdin: bytes | None = None) -> int:
        arguments: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if stdin is not None:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        reply = self.call("guest-exec", arguments, timeout=30.0)
        return self._checked(
            "guest-exec", lambda: _int(_object(reply, "the reply").get("pid"), "pid", 1)
        )

    def exec_status(self, pid: int, timeout: float) -> ExecStatus:
        reply = self.call("guest-exec-status", {"pid": pid}, timeout)
        return self._checked("guest-exec-status", lambda: _exec_status(reply))

    def exited(self, pid: int, deadline: float) -> ExecStatus | None:
        """The status of guest process PID once it has exited; None while it still runs at
        DEADLINE. A short command is done in a few ms: it is looked at every ``POLL_QUICK``
        for its first ``QUICK`` seconds, then less and less often."""
        began = time.monotonic()
        pause = POLL_QUICK
        while True:
            # The reply carries all captured output once it exited: give it time to arrive.
            status = self.exec_status(pid, max(30.0, deadline - time.monotonic()))
            if status.exited:
                return status
            if time.monotonic() >= deadline:
                return None
            time.sleep(pause)
            if time.monotonic() - began > QUICK:
                pause = min(pause * 2, POLL_MAX)

    def open(self, path: str, mode: str) -> int:
        reply = self.call("guest-file-open", {"path": path, "mode": mode})
        return self._checked("guest-file-open", lambda: _int(reply, "the handle"))

    def read(self, handle: int, count: int, timeout: float = 60.0) -> tuple[bytes, bool]:
        """Up to COUNT bytes at the handle's position, and whether the file ended there."""
        reply = self.call("guest-file-read", {"handle": handle, "count": count}, timeout)

        def check() -> tuple[bytes, bool]:
            found = _object(reply, "the reply")
            data = _bytes(found.get("buf-b64"), "buf-b64", count)
            if len(data) > count:
                raise AgentInvalidReply(f"{len(data)} bytes where at most {count} were asked for")
            _int(found.get("count"), "count", 0, count)
            return data, _bool(found.get("eof", False), "eof")

        return self._checked("guest-file-read", check)

    def write(self, handle: int, data: bytes, timeout: float = 60.0) -> None:
        encoded = base64.b64encode(data).decode()
        reply = self.call("guest-file-write", {"handle": handle, "buf-b64": encoded}, timeout)
        written = self._checked(
            "guest-file-write",
            lambda: _int(_object(reply, "the reply").get("count"), "count", 0, len(data)),
        )
        if written != len(data):
            raise ClanVMError(
                f"the guest of VM '{self.name}' wrote only {written} of {len(data)} bytes "
                "(is its disk full?)"
            )

    def size(self, handle: int) -> int | None:
        """The size of the open file as the guest tells it (seeking to its end and back), or
        None when it cannot tell (a pipe)."""
        try:
            reply = self.call("guest-file-seek", {"handle": handle, "offset": 0, "whence": "end"})
        except ClanVMError as error:
            if isinstance(error, AgentInvalidReply):
                raise
            return None
        size = self._checked(
            "guest-file-seek", lambda: _int(_object(reply, "the reply").get("position"), "position")
        )
        self.call("guest-file-seek", {"handle": handle, "offset": 0, "whence": "set"})
        return size

    def close(self, handle: int) -> None:
        with contextlib.suppress(ClanVMError):
            self.call("guest-file-close", {"handle": handle})

    def flush(self, handle: int) -> None:
        self.call("guest-file-flush", {"handle": handle})

    def read_file(self, path: str, limit: int) -> bytes:
        """The start of PATH: all of it, or LIMIT + 1 bytes when it is larger (a symlink to
        /dev/zero included)."""
        handle = self.open(path, "r")
        data = b""
        try:
            while len(data) <= limit:
                chunk, eof = self.read(handle, min(self.read_chunk, limit + 1 - len(data)))
                data += chunk
                if eof or not chunk:
                    break
        finally:
            self.close(handle)
        return data

    def addresses(self) -> list[Address]:
        """Every address the guest reports for its interfaces, loopback's excepted."""
        reply = self.call("guest-network-get-interfaces")
        return self._checked("guest-network-get-interfaces", lambda: _addresses(reply))


def _exec_status(reply: Any) -> ExecStatus:
    found = _object(reply, "the reply")
    exited = _bool(found.get("exited"), "exited")
    code = 0
    if exited:
        if "signal" in found:
            code = 128 + _int(found["signal"], "signal", 1, 127)
        elif "exitcode" in found:
            code = _int(found["exitcode"], "exitcode", 0, 255)
        else:
            raise AgentInvalidReply("an exited command without exitcode or signal")
    return ExecStatus(
        exited=exited,
        exit_code=code,
        stdout=_bytes(found.get("out-data", ""), "out-data", EXEC_OUTPUT_CAP),
        stderr=_bytes(found.get("err-data", ""), "err-data", EXEC_OUTPUT_CAP),
        truncated=_bool(found.get("out-truncated", False), "out-truncated")
        or _bool(found.get("err-truncated", False), "err-truncated"),
    )


def _addresses(reply: Any) -> list[Address]:
    if not isinstance(reply, list):
        raise AgentInvalidReply(f"the interfaces are {_shown(reply)}, not a list")
    found = []
    for interface in reply:
        entry = _object(interface, "an interface")
        name = entry.get("name")
        if not isinstance(name, str):
            raise AgentInvalidReply(f"an interface name is {_shown(name)}")
        listed = entry.get("ip-addresses", [])
        if not isinstance(listed, list):
            raise AgentInvalidReply(f"the addresses of {name!r} are {_shown(listed)}")
        for item in listed:
            address = _object(item, "an address")
            text = address.get("ip-address")
            if not isinstance(text, str) or address.get("ip-address-type") not in ("ipv4", "ipv6"):
                raise AgentInvalidReply(f"an address of {name!r} is {_shown(item)}")
            prefix = address.get("prefix")
            prefix = None if prefix is None else _int(prefix, "a prefix", 0, 128)
            if name != "lo":
                found.append(Address(name, text, prefix))
    return found


def _agent_enabled(store: Store, name: str) -> bool:
    return store.read_config(name).get("agent", True) is not False


AFTER_BOOT = " (after a boot, clan-vm-manager start {name} --wait-for-agent waits for it)"


ANSWERED = "agent-answered"  # in the VM's runtime directory: which run, and when (mtime)


def _run_of(state: VMState) -> bytes:
    """Which run of the VM STATE records: a restart is another run, its agent not yet seen."""
    return f"{state.started_at}|{state.pid_start}".encode()


def _remember_answer(run: Path, state: VMState) -> None:
    """Note that the agent of this run answered, now. Not atomic, and it need not be: a
    record torn by a kill reads as none, and ``status`` then asks the agent."""
    try:
        fd = os.open(run / ANSWERED, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return
    try:
        os.write(fd, _run_of(state))
    finally:
        os.close(fd)


def _forget_answer(run: Path) -> None:
    with contextlib.suppress(OSError):
        (run / ANSWERED).unlink()


def last_answer(store: Store, name: str, state: VMState) -> float | None:
    """When the agent of VM NAME's current run (STATE) last answered a session's handshake
    (seconds since the epoch); None when it has not in this run, as far as is known."""
    try:
        fd = os.open(store.paths(name).run / ANSWERED, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if os.read(fd, 256) != _run_of(state):
            return None
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)


def _connect(
    machine: Machine,
    stack: contextlib.ExitStack[bool | None],
    name: str,
    wait: float,
    hint: str,
    answered: bool,
) -> GuestAgent:
    """The agent's session on MACHINE, entered on STACK, waiting up to WAIT seconds for an
    agent that does not answer yet (one that ANSWERED in this run is asked at once)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            probe = max(PING_TIMEOUT, min(PING_TIMEOUT * 2, wait))  # wait 0: one try
            return stack.enter_context(machine.agent(probe, answered))
        except AgentUnavailable as error:
            answered = False
            if not machine.alive():
                raise StateConflict(
                    f"VM '{name}' stopped while waiting for its guest agent"
                ) from None
            if time.monotonic() >= deadline:
                raise AgentUnavailable(
                    f"the guest agent of VM '{name}' does not answer (waited {wait:g}s: "
                    f"{error}); is qemu-guest-agent running in the guest?" + hint.format(name=name)
                ) from None
            time.sleep(0.2)


@contextlib.contextmanager
def session(
    store: Store,
    name: str,
    wait: float,
    hint: str = AFTER_BOOT,
    queue: float | None = None,
    *,
    tidy: bool = True,
) -> Iterator[Agent]:
    """A session with the agent of running VM NAME, waiting up to WAIT seconds for it to
    answer (an agent still starting in a booting guest); HINT ends the error if it does not.
    Sessions of one VM take turns: QUEUE seconds (default WAIT + 60) for another command's
    to end, else ``Busy``. It begins by removing what killed commands left in the guest
    (``guest_temp``), unless not to TIDY (a read-only command)."""
    store.require(name)
    state = reconcile.current(store, name)
    if state.status not in reconcile.ACTIVE:
        raise StateConflict(f"VM '{name}' is not running (it is {state.status})")
    if not _agent_enabled(store, name):
        raise ClanVMError(f"VM '{name}' has no guest agent channel (agent = false)")
    machine = machines.machine(store, name, state)
    # In the VM's runtime directory, not the state directory: status, which asks the agent,
    # is a read-only command and creates nothing there.
    run = store.paths(name).run
    files.private_dir(run.parent)
    files.private_dir(run)
    turns = wait + 60 if queue is None else queue
    with (
        files.locked(run / "agent.lock", f"the guest agent of '{name}'", turns),
        contextlib.ExitStack() as stack,
    ):
        try:
            answered = last_answer(store, name, state) is not None
            raw = _connect(machine, stack, name, wait, hint, answered)
            _remember_answer(run, state)
            agent = Agent(raw, name, store.paths(name).dir / guest_temp.FOLDER, machine)
            if tidy:
                guest_temp.tidy(agent)
            yield agent
        except (AgentUnavailable, AgentInvalidReply):
            _forget_answer(run)  # an agent that failed us is asked again by the next status
            raise
