"""A guest agent of the test's own on a running VM's agent channel: it speaks the QEMU guest
agent's protocol (``guest-sync-delimited`` and the 0xFF that begins a session included) and
answers each command as the test says, so a test can play a hostile guest: malformed
replies, endless files, lying sizes and addresses, a host key that never ends.

``hostile(state_dir, name, replies)`` takes the VM's agent FIFOs from QEMU (QEMU keeps the
ones it opened, but nothing reaches them any more) and serves them in a thread. A reply
is bytes (sent as they are, a newline added), a JSON value (sent as
``{"return": value}``), a callable taking the arguments and returning either, or an
iterator of bytes (streamed: an endless answer).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import socket
import threading
import time
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
    """Serves the agent channel of a running VM: its FIFOs (``fifos``: unlinked and made
    anew, so QEMU keeps writing to and reading from ones nobody else reaches), or a socket
    (``socket``: a VM started by an earlier version, which served the port on one)."""

    def __init__(
        self,
        replies: dict[str, Reply],
        *,
        fifos: tuple[Path, Path] | None = None,
        socket_path: Path | None = None,
    ) -> None:
        self.replies = dict(replies)
        self.seen: list[str] = []  # every command asked, in order
        self._stop = threading.Event()
        self._made: list[Path] = []
        self._fds: list[int] = []
        self._server: socket.socket | None = None
        if fifos is not None:
            for fifo in fifos:
                fifo.unlink(missing_ok=True)
                os.mkfifo(fifo, 0o600)
                self._made.append(fifo)
            # Both opened for reading and writing: never an end of file, never EPIPE.
            self._fds = [os.open(fifo, os.O_RDWR | os.O_NONBLOCK) for fifo in fifos]
            target: Callable[[], None] = self._serve_fifos
        else:
            assert socket_path is not None
            socket_path.unlink(missing_ok=True)
            self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._server.bind(str(socket_path))
            self._made.append(socket_path)
            self._server.listen(4)
            self._server.settimeout(0.2)
            target = self._serve_socket
        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._server is not None:
            self._server.close()
        for fd in self._fds:
            os.close(fd)
        for path in self._made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def __enter__(self) -> FakeAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- on FIFOs: no connections; a client's session begins with 0xFF -------------------------

    def _serve_fifos(self) -> None:
        requests, answers = self._fds
        buffer = b""
        while not self._stop.is_set():
            if not select.select([requests], [], [], 0.2)[0]:
                continue
            buffer += os.read(requests, 1 << 20)
            if b"\xff" in buffer:  # a new session: what came before is dropped
                buffer = buffer[buffer.rindex(b"\xff") + 1 :]
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self._request(line, lambda data: self._put(answers, requests, data))

    def _put(self, answers: int, requests: int, data: bytes) -> bool:
        """Write DATA for the client; False once it is given up: the test ends, or the next
        session has begun (the client went away, as it should after a bad reply)."""
        view = memoryview(data)
        while view:
            if self._stop.is_set() or select.select([requests], [], [], 0)[0]:
                return False
            if not select.select([], [answers], [], 0.05)[1]:
                continue
            with contextlib.suppress(BlockingIOError):
                view = view[os.write(answers, view[: 1 << 16]) :]
        return True

    # --- on a socket: one client at a time -------------------------------------------------------

    def _serve_socket(self) -> None:
        assert self._server is not None
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
                self._request(line.lstrip(b"\xff"), lambda data: self._send(conn, data))

    def _send(self, conn: socket.socket, data: bytes) -> bool:
        conn.sendall(data)
        return not self._stop.is_set()

    # --- the answers ---------------------------------------------------------------------------

    def _request(self, line: bytes, put: Callable[[bytes], bool]) -> None:
        request = json.loads(line)
        self._answer(put, request["execute"], request.get("arguments") or {})

    def _answer(self, put: Callable[[bytes], bool], command: str, args: dict[str, Any]) -> None:
        self.seen.append(command)
        if command == "guest-sync-delimited":
            put(b"\xff" + json.dumps({"return": args["id"]}).encode() + b"\n")
            return
        reply = self.replies.get(command, {})
        while callable(reply):
            reply = reply(args)
        if isinstance(reply, Iterator):
            for piece in reply:
                if not put(piece):
                    return
            return
        if not isinstance(reply, bytes):
            reply = json.dumps({"return": reply}).encode()
        put(reply + b"\n")


def agent_fifos(state_dir: Path, name: str) -> tuple[Path, Path]:
    """The agent FIFOs of VM NAME in STATE_DIR (what QEMU reads, what it writes)."""
    from clan_vm_tasks.state.store import VMPaths

    return VMPaths(state_dir / "vms" / name).agent_fifos


def hostile(state_dir: Path, name: str, replies: dict[str, Reply]) -> FakeAgent:
    """A fake agent on the channel of running VM NAME."""
    return FakeAgent(replies, fifos=agent_fifos(state_dir, name))


def _opened_by_qemu(state_dir: Path, name: str) -> bool:
    """Whether QEMU of VM NAME holds its agent FIFOs open (from then on they can be taken)."""
    from clan_vm_tasks.state.store import VMPaths

    paths = VMPaths(state_dir / "vms" / name)
    try:
        pid = int(paths.pidfile.read_text())
        fds = Path(f"/proc/{pid}/fd")
        held = {os.readlink(fd) for fd in fds.iterdir()}
    except (OSError, ValueError):
        return False
    return all(str(fifo) in held for fifo in paths.agent_fifos)


@contextlib.contextmanager
def taken_over_when_opened(state_dir: Path, replies: dict[str, dict[str, Reply]]) -> Iterator[None]:
    """While the block runs: once QEMU of VM NAME (a key of REPLIES, started meanwhile) has
    opened its agent's FIFOs, a fake agent answering with REPLIES[NAME] serves them."""
    done = threading.Event()
    agents: list[FakeAgent] = []

    def watch(name: str) -> None:
        while not done.is_set():
            if _opened_by_qemu(state_dir, name):
                agents.append(hostile(state_dir, name, replies[name]))
                return
            time.sleep(0.02)

    watchers = [threading.Thread(target=watch, args=(n,), daemon=True) for n in replies]
    for watcher in watchers:
        watcher.start()
    try:
        yield
    finally:
        done.set()
        for watcher in watchers:
            watcher.join()
        for agent in agents:
            agent.close()


def exec_replies(
    status: Callable[[dict[str, Any]], Reply] | Reply, pid: int = 42
) -> dict[str, Reply]:
    """Replies for guest-exec (a pid) and guest-exec-status (STATUS)."""
    return {"guest-exec": {"pid": pid}, "guest-exec-status": status}
