"""The serial console itself: a terminal attached to it (Ctrl-] detaches), or a program
reading and typing (the web page). Loaded only by the commands that attach."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clan_vm_tasks import render
from clan_vm_tasks.errors import ClanVMError

DETACH = b"\x1d"  # Ctrl-]


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
