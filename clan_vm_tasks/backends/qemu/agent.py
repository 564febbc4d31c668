"""The QEMU guest agent's protocol on the socket QEMU serves for the VM's agent port.

The channel is a byte stream that may hold the tail of an earlier session (a client
that went away mid-command), and a guest without an agent simply never answers. So a
session starts with ``guest-sync-delimited``: the agent answers with a 0xFF byte
followed by the id we sent, and everything before that is dropped. Every read has a
deadline, so nothing here can hang, and no reply is kept beyond ``agent_wire.MAX_REPLY``
bytes, so nothing here can fill the memory.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from clan_vm_tasks.backends import agent_wire
from clan_vm_tasks.errors import AgentInvalidReply, AgentUnavailable

DELIMITER = b"\xff"
# File data per guest-file-read/-write: 1.4 MB of base64, far below qemu-ga's 64 MiB per token.
CHUNK = 1 << 20


class AgentSession:
    read_chunk = write_chunk = CHUNK

    def __init__(self, path: Path, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def __enter__(self) -> AgentSession:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(str(self._path))
        except OSError as error:
            sock.close()
            raise AgentUnavailable(f"no guest agent channel at {self._path}: {error}") from None
        self._sock = sock
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
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: dict[str, Any]) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as error:
            raise AgentUnavailable(f"the guest agent channel broke: {error}") from None

    def _fill(self, deadline: float, what: str) -> bytes:
        assert self._sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AgentUnavailable(f"the guest agent did not answer {what} in time")
        self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(1 << 20)
        except TimeoutError:
            raise AgentUnavailable(f"the guest agent did not answer {what} in time") from None
        except OSError as error:
            raise AgentUnavailable(f"the guest agent channel broke: {error}") from None
        if not chunk:
            raise AgentUnavailable("the guest agent channel was closed")
        self._buffer += chunk
        return chunk

    def _sync(self, deadline: float) -> None:
        token = int.from_bytes(os.urandom(4)) >> 1  # what secrets.randbelow(2**31) draws
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
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
        self._send(message)
        return agent_wire.result(command, self._read_message(time.monotonic() + timeout, command))
