"""The serial console: waiting for text in its log, and attaching a terminal to it."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from clan_vm_tasks import render
from clan_vm_tasks.errors import ClanVMError

DETACH = b"\x1d"  # Ctrl-]
POLL = 0.01  # seconds between looks at a log for a text: 5 ms late on average
ALIVE_EVERY = 0.1  # seconds between asking, while it is silent, whether the VM still runs


def read_from(log: Path, offset: int) -> bytes:
    try:
        with log.open("rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


def last_lines(log: Path, offset: int, count: int = 15) -> list[str]:
    text = read_from(log, offset).decode(errors="replace").replace("\r", "")
    return [line for line in text.splitlines() if line.strip()][-count:]


def wait_for_text(
    log: Path, text: str, offset: int, timeout: float, alive: Callable[[], bool]
) -> bool:
    """True once TEXT appears in LOG after OFFSET; False on timeout or when the VM dies.
    The log is read on from where the last look ended, every POLL seconds."""
    needle = text.encode()
    keep = len(needle) - 1  # what of a look may begin the text that the next one ends
    deadline = time.monotonic() + timeout
    ask_at = 0.0  # when to ask next whether the VM still runs
    with contextlib.ExitStack() as stack:
        reader: BinaryIO | None = None
        tail = b""
        while True:
            if reader is None:
                with contextlib.suppress(FileNotFoundError):
                    reader = stack.enter_context(log.open("rb"))
                    reader.seek(offset)
            chunk = reader.read() if reader is not None else b""
            window = tail + chunk
            if needle in window:
                return True
            tail = window[max(len(window) - keep, 0) :] if keep else b""
            now = time.monotonic()
            if now >= deadline:
                return False
            if not chunk and now >= ask_at:
                if not alive():
                    # One more look: the text may have landed just before QEMU exited.
                    rest = reader.read() if reader is not None else read_from(log, offset)
                    return needle in tail + rest
                ask_at = now + ALIVE_EVERY
            time.sleep(POLL)


def connect(serial_socket: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(serial_socket))
    except OSError as error:
        sock.close()
        raise ClanVMError(f"cannot attach to the console at {serial_socket}: {error}") from None
    return sock


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    try:
        # TCSANOW, not setraw's default TCSAFLUSH: keys typed while we attached are kept.
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def relay(sock: socket.socket, stdin: int, stdout: int, idle_after_eof: float = 1.0) -> str:
    """Copy between the console socket and stdin/stdout until detach, EOF or the VM ends.

    On a terminal, Ctrl-] detaches. Without one, stdin is sent until it ends and
    output keeps flowing until the guest has been quiet for IDLE_AFTER_EOF seconds.
    Returns why it ended: "detached", "input ended" or "console closed".
    """
    interactive = os.isatty(stdin)
    shown = render.for_output(stdout)
    with _raw_terminal(stdin) if interactive else contextlib.nullcontext():
        if interactive:
            os.write(
                sys.stderr.fileno(), b"Connected to the serial console; press Ctrl-] to detach.\r\n"
            )
        stdin_open = True
        while True:
            watch: list[Any] = [sock, stdin] if stdin_open else [sock]
            ready, _, _ = select.select(watch, [], [], None if stdin_open else idle_after_eof)
            if not ready:
                return "input ended"
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return "console closed"
                os.write(stdout, shown(data))
            if stdin in ready:
                data = os.read(stdin, 4096)
                if interactive and DETACH in data:
                    data = data.split(DETACH, 1)[0]
                    if data:
                        sock.sendall(data)
                    return "detached"
                if not data:
                    stdin_open = False
                    continue
                sock.sendall(data)


def attach(serial_socket: Path) -> str:
    with connect(serial_socket) as sock:
        return relay(sock, sys.stdin.fileno(), sys.stdout.fileno())


class Stream:
    """The console socket for a program: a thread hands what the guest prints to ON_DATA
    (b"" once the console closed); ``send`` types."""

    def __init__(self, serial_socket: Path, on_data: Callable[[bytes], None]) -> None:
        self._sock = connect(serial_socket)
        self._on_data = on_data
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            self._on_data(data)
        self._on_data(b"")

    def send(self, data: bytes) -> bool:
        try:
            self._sock.sendall(data)
        except OSError:
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
