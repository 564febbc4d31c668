"""The QEMU guest agent's protocol on the socket QEMU serves for the VM's agent port.

The channel is a byte stream that may hold the tail of an earlier session (a client
that went away mid-command), and a guest without an agent simply never answers. So a
session starts with ``guest-sync-delimited``: the agent answers with a 0xFF byte
followed by the id we sent, and everything before that is dropped. Every read has a
deadline, so nothing here can hang.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from clan_vm_tasks.errors import AgentError, AgentUnavailable

DELIMITER = b"\xff"


class AgentSession:
    def __init__(self, path: Path, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

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

    def _fill(self, deadline: float, what: str) -> None:
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

    def _sync(self, deadline: float) -> None:
        token = secrets.randbelow(1 << 31)
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        while True:
            # Drop everything up to the delimiter: leftovers of an earlier session.
            while DELIMITER not in self._buffer:
                self._buffer = b""
                self._fill(deadline, "the sync handshake")
            self._buffer = self._buffer.split(DELIMITER)[-1]
            reply = self._read_message(deadline, "the sync handshake")
            if reply.get("return") == token:
                return

    def _read_message(self, deadline: float, what: str) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            self._fill(deadline, what)
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line.strip(DELIMITER))
        except ValueError:
            raise AgentUnavailable(f"the guest agent answered {what} with garbage") from None
        if not isinstance(message, dict):
            raise AgentUnavailable(f"the guest agent answered {what} with garbage")
        return message

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._send(message)
        reply = self._read_message(time.monotonic() + timeout, command)
        if "error" in reply:
            error = reply["error"]
            desc = error.get("desc") if isinstance(error, dict) else error
            raise AgentError(f"the guest agent refused {command}: {desc}")
        return reply.get("return")
