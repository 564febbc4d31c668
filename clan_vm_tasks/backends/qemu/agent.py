"""The QEMU guest agent's protocol on the channel QEMU gives the VM's agent port.

QEMU relays the port through two FIFOs of ours (a ``pipe`` chardev): we write requests to
``agent.in`` and read answers from ``agent.out``. QEMU holds both open for the VM's whole
run, so the guest always sees a host attached and its agent waits in a read; on a socket
it looked for a newly attached client only every 100 ms. A VM started by an earlier version
serves the port on a socket (``agent.sock``); that is used when no QEMU reads ``agent.in``.

The channel is a byte stream that may hold the tail of an earlier session (a command that
was killed mid-request or before reading its answer), and a guest without an agent simply
never answers. So a session starts with 0xFF, which makes the agent drop any half-read
request, and ``guest-sync-delimited``: the agent answers with a 0xFF byte followed by the
id we sent, and everything before that is dropped. Every read and write has a deadline, so
nothing here can hang, and no reply is kept beyond ``agent_wire.MAX_REPLY`` bytes, so
nothing here can fill the memory. Sessions of one VM take turns (``vm.agent.session``).
"""

from __future__ import annotations

import json
import os
import select
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from clan_vm_tasks.backends import agent_wire
from clan_vm_tasks.errors import AgentInvalidReply, AgentUnavailable

DELIMITER = b"\xff"
# File data per guest-file-read/-write: 1.4 MB of base64, far below qemu-ga's 64 MiB per token.
CHUNK = 1 << 20


def _left(deadline: float, what: str) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise AgentUnavailable(f"the guest agent did not answer {what} in time")
    return remaining


class _Pipes:
    """Both FIFOs, opened without blocking: writing to ``.in`` fails at once when QEMU is
    gone (no reader), reading ``.out`` ends when QEMU is gone (no writer)."""

    def __init__(self, fifos: tuple[Path, Path]) -> None:
        into, out = fifos
        try:
            self._read = os.open(out, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            raise AgentUnavailable(f"no guest agent channel at {out}: {error}") from None
        try:
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
            self._write = os.open(into, flags)
        except OSError as error:
            os.close(self._read)
            raise AgentUnavailable(f"no guest agent channel at {into}: {error}") from None
        self._writable = select.poll()
        self._writable.register(self._write, select.POLLOUT)
        self._readable = select.poll()
        self._readable.register(self._read, select.POLLIN)

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            if not self._writable.poll(_left(deadline, "a request") * 1000):
                continue  # the deadline is checked again above
            try:
                view = view[os.write(self._write, view) :]
            except BlockingIOError:
                continue
            except OSError as error:
                raise AgentUnavailable(f"the guest agent channel broke: {error}") from None

    def recv(self, deadline: float, what: str) -> bytes:
        while True:
            if not self._readable.poll(_left(deadline, what) * 1000):
                continue
            try:
                return os.read(self._read, CHUNK)  # b"": QEMU has gone
            except BlockingIOError:
                continue
            except OSError as error:
                raise AgentUnavailable(f"the guest agent channel broke: {error}") from None

    def close(self) -> None:
        os.close(self._write)
        os.close(self._read)


class _Socket:
    """QEMU's listening socket (VMs started by an earlier version)."""

    def __init__(self, path: Path, timeout: float) -> None:
        import socket  # lazy: the FIFOs need none

        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except OSError as error:
            self._sock.close()
            raise AgentUnavailable(f"no guest agent channel at {path}: {error}") from None

    def send(self, data: bytes, deadline: float) -> None:
        self._sock.settimeout(_left(deadline, "a request"))
        try:
            self._sock.sendall(data)
        except OSError as error:
            raise AgentUnavailable(f"the guest agent channel broke: {error}") from None

    def recv(self, deadline: float, what: str) -> bytes:
        self._sock.settimeout(_left(deadline, what))
        try:
            return self._sock.recv(CHUNK)
        except TimeoutError:
            raise AgentUnavailable(f"the guest agent did not answer {what} in time") from None
        except OSError as error:
            raise AgentUnavailable(f"the guest agent channel broke: {error}") from None

    def close(self) -> None:
        self._sock.close()


class AgentSession:
    read_chunk = write_chunk = CHUNK

    def __init__(self, fifos: tuple[Path, Path], socket_path: Path, timeout: float) -> None:
        self._fifos = fifos
        self._socket_path = socket_path
        self._timeout = timeout
        self._channel: _Pipes | _Socket | None = None
        self._buffer = bytearray()

    def __enter__(self) -> AgentSession:
        try:
            self._channel = _Pipes(self._fifos)
        except AgentUnavailable:
            if not self._socket_path.exists():
                raise
            self._channel = _Socket(self._socket_path, self._timeout)
        try:
            self._sync(time.monotonic() + self._timeout)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _send(self, message: dict[str, Any], timeout: float, prefix: bytes = b"") -> None:
        assert self._channel is not None
        data = prefix + json.dumps(message).encode() + b"\n"
        self._channel.send(data, time.monotonic() + timeout)

    def _fill(self, deadline: float, what: str) -> bytes:
        assert self._channel is not None
        chunk = self._channel.recv(deadline, what)
        if not chunk:
            raise AgentUnavailable("the guest agent channel was closed")
        self._buffer += chunk
        return chunk

    def _sync(self, deadline: float) -> None:
        token = int.from_bytes(os.urandom(4)) >> 1  # what secrets.randbelow(2**31) draws
        # 0xFF first: the agent drops a request an earlier session left half-written (and
        # answers it with a parse error, dropped below with the rest).
        self._send(
            {"execute": "guest-sync-delimited", "arguments": {"id": token}},
            self._timeout,
            DELIMITER,
        )
        while True:
            # Drop everything up to the delimiter: leftovers of an earlier session.
            while DELIMITER not in self._buffer:
                self._buffer.clear()
                self._fill(deadline, "the sync handshake")
            del self._buffer[: self._buffer.rindex(DELIMITER) + 1]
            try:
                reply = self._read_message(deadline, "the sync handshake")
            except AgentInvalidReply:
                continue  # garbage after a delimiter: wait for our answer until the deadline
            if reply.get("return") == token:
                return

    def _read_message(self, deadline: float, what: str) -> dict[str, Any]:
        """One line of the channel, parsed; never more than MAX_REPLY bytes are kept."""
        searched = 0
        while (end := self._buffer.find(b"\n", searched)) < 0:
            searched = len(self._buffer)
            if searched > agent_wire.MAX_REPLY:
                self._buffer.clear()
                raise AgentInvalidReply(
                    f"an answer to {what} longer than {agent_wire.MAX_REPLY >> 20} MiB"
                )
            self._fill(deadline, what)
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return agent_wire.parse(line.strip(DELIMITER))

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._send(message, timeout)
        return agent_wire.result(command, self._read_message(time.monotonic() + timeout, command))
