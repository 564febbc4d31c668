"""A small synchronous QMP client with a deadline on every read.

QEMU's QMP socket serves one client at a time, so sessions are short: connect, read
the greeting, ``qmp_capabilities``, a few commands, disconnect. Events that arrive
between replies are skipped (the tool reads QEMU's events from its event log). It is
plain ``socket`` and ``json``: ``status`` and ``start`` talk QMP on every call, and an
asyncio client costs more to import than the whole conversation takes.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from clan_vm_tasks.errors import ClanVMError


class QMPUnavailable(ClanVMError):
    """QMP did not answer (no socket, QEMU gone or hung, another client connected)."""


class QMPCommandFailed(ClanVMError):
    """QEMU answered a command with an error."""


_DECODER = json.JSONDecoder()


class Monitor:
    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self._path = socket_path
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = ""
        self._ids = itertools.count(1)

    def __enter__(self) -> Monitor:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = sock
        deadline = time.monotonic() + self._timeout
        try:
            sock.settimeout(self._timeout)
            sock.connect(str(self._path))
            greeting = self._next(deadline, "the greeting")
            if "QMP" not in greeting:
                raise QMPUnavailable(f"QMP at {self._path} did not greet: {greeting}")
            self._call("qmp_capabilities", None, deadline)
        except (OSError, QMPUnavailable, QMPCommandFailed) as error:
            self.close()
            reason = error if isinstance(error, ClanVMError) else repr(error)
            raise QMPUnavailable(f"QMP at {self._path} did not answer: {reason}") from None
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

    def _next(self, deadline: float, what: str) -> dict[str, Any]:
        """The next message QEMU sends (events included)."""
        assert self._sock is not None
        while True:
            text = self._buffer.lstrip()
            if text:
                try:
                    message, end = _DECODER.raw_decode(text)
                except ValueError:
                    pass  # not all of it here yet
                else:
                    self._buffer = text[end:]
                    if not isinstance(message, dict):
                        raise QMPUnavailable(f"QMP sent something other than a message: {text}")
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QMPUnavailable(f"no answer to {what} in time")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                raise QMPUnavailable(f"no answer to {what} in time") from None
            if not chunk:
                raise QMPUnavailable(f"QEMU closed QMP during {what}")
            self._buffer += chunk.decode(errors="replace")

    def _call(self, command: str, arguments: dict[str, Any] | None, deadline: float) -> Any:
        assert self._sock is not None
        request: dict[str, Any] = {"execute": command, "id": next(self._ids)}
        if arguments is not None:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            reply = self._next(deadline, command)
            if reply.get("id") != request["id"]:
                continue  # an event, or the tail of an earlier session
            if "error" in reply:
                error = reply["error"]
                desc = error.get("desc") if isinstance(error, dict) else error
                raise QMPCommandFailed(f"QEMU refused {command}: {desc}")
            return reply.get("return")

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        if self._sock is None:
            raise QMPUnavailable(f"QMP at {self._path} is not connected")
        deadline = time.monotonic() + (timeout if timeout is not None else self._timeout)
        try:
            return self._call(command, arguments, deadline)
        except OSError as error:
            raise QMPUnavailable(f"QMP stopped answering during {command}: {error!r}") from None
        except QMPUnavailable as error:
            raise QMPUnavailable(f"QMP stopped answering during {command}: {error}") from None


def query(socket_path: Path, command: str, timeout: float = 5.0) -> Any:
    """One command in its own short session."""
    with Monitor(socket_path, timeout) as monitor:
        return monitor.execute(command)
