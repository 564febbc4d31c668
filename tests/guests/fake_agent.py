"""A guest agent of the test's own on a running VM's agent socket: it speaks the QEMU guest
agent's protocol (``guest-sync-delimited`` included) and answers each command as the test
says, so a test can play a hostile guest: malformed replies, endless files, lying sizes and
addresses, a host key that never ends.

``FakeAgent(socket, replies)`` takes the socket's path from QEMU (QEMU keeps its listening
descriptor, but nothing reaches it any more) and serves one client at a time in a thread.
A reply is bytes (sent as they are, a newline added), a JSON value (sent as
``{"return": value}``), a callable taking the arguments and returning either, or an
iterator of bytes (streamed: an endless answer).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Reply = Any  # bytes | JSON value | Callable[[dict], Reply] | Iterator[bytes]


def endless(piece: bytes = b"A" * 65536) -> Iterator[bytes]:
    """An answer that never ends (and never has a newline)."""
    while True:
        yield piece


class Files:
    """guest-file-* over a dict of path -> content (bytes, or an endless iterator), with a
    size the guest tells (``sizes``) that may lie."""

    def __init__(self, files: dict[str, Any], sizes: dict[str, int] | None = None) -> None:
        self.files = files
        self.sizes = sizes or {}
        self.open: dict[int, list[Any]] = {}  # handle -> [path, position, data source]

    def replies(self) -> dict[str, Reply]:
        return {
            "guest-file-open": self._open,
            "guest-file-seek": self._seek,
            "guest-file-read": self._read,
            "guest-file-close": lambda args: {},
        }

    def _open(self, args: dict[str, Any]) -> Reply:
        path = args["path"]
        if path not in self.files:
            return b'{"error": {"class": "GenericError", "desc": "No such file or directory"}}'
        handle = len(self.open) + 1000
        self.open[handle] = [path, 0, self.files[path]]
        return handle

    def _seek(self, args: dict[str, Any]) -> Reply:
        path, _, content = self.open[args["handle"]]
        if args.get("whence") == "end":
            size = self.sizes.get(path, len(content) if isinstance(content, bytes) else 0)
            return {"position": size, "eof": False}
        return {"position": 0, "eof": False}

    def _read(self, args: dict[str, Any]) -> Reply:
        entry = self.open[args["handle"]]
        _, position, content = entry
        count = args["count"]
        if isinstance(content, bytes):
            data = content[position : position + count]
            eof = position + len(data) >= len(content)
        else:
            data, eof = next(content)[:count], False
        entry[1] = position + len(data)
        return {"count": len(data), "buf-b64": base64.b64encode(data).decode(), "eof": eof}


class FakeAgent:
    def __init__(self, path: Path, replies: dict[str, Reply]) -> None:
        self.path = path
        self.replies = dict(replies)
        self.seen: list[str] = []  # every command asked, in order
        self._stop = threading.Event()
        path.unlink(missing_ok=True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(4)
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> FakeAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # The client may go away mid-answer (as it should after a bad reply).
            with conn, contextlib.suppress(OSError):
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        buffer = b""
        conn.settimeout(0.2)
        while not self._stop.is_set():
            try:
                chunk = conn.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                self._answer(conn, request["execute"], request.get("arguments") or {})

    def _answer(self, conn: socket.socket, command: str, args: dict[str, Any]) -> None:
        self.seen.append(command)
        if command == "guest-sync-delimited":
            conn.sendall(b"\xff" + json.dumps({"return": args["id"]}).encode() + b"\n")
            return
        reply = self.replies.get(command, {})
        while callable(reply):
            reply = reply(args)
        if isinstance(reply, Iterator):
            for piece in reply:
                if self._stop.is_set():
                    return
                conn.sendall(piece)
            return
        if not isinstance(reply, bytes):
            reply = json.dumps({"return": reply}).encode()
        conn.sendall(reply + b"\n")


def exec_replies(
    status: Callable[[dict[str, Any]], Reply] | Reply, pid: int = 42
) -> dict[str, Reply]:
    """Replies for guest-exec (a pid) and guest-exec-status (STATUS)."""
    return {"guest-exec": {"pid": pid}, "guest-exec-status": status}


def agent_socket(state_dir: Path, name: str) -> Path:
    """The agent socket of VM NAME in STATE_DIR (where QEMU serves it)."""
    from clan_vm_tasks.state.store import VMPaths

    return VMPaths(state_dir / "vms" / name).agent_socket
