"""The serial console of a domain as a libvirt stream: the same over ``qemu+ssh`` as on
this machine. A reader thread collects what the guest prints; a domain started paused
gets its console opened before it runs, so no line is missed."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from typing import Any

from clan_vm_tasks import render
from clan_vm_tasks.backends.libvirt.connection import Host, LibvirtFailure, lib
from clan_vm_tasks.errors import StateConflict

DETACH = b"\x1d"  # Ctrl-]
IDLE_AFTER_INPUT = 1.0


class Console:
    def __init__(
        self,
        host: Host,
        dom: Any,
        *,
        take_over: bool = True,
        on_data: Callable[[bytes], None],
        keep: bool = True,
    ) -> None:
        libvirt = lib()
        self._on_data = on_data  # also gets b"" once the stream ended
        self._keep = keep  # collect the output for wait_for (not for a long-lived viewer)
        self.output = bytearray()
        self.ended = False
        self.last_output = time.monotonic()
        self._changed = threading.Condition()
        conn = host.conn()
        self._stream = host.call(conn.newStream, 0)
        # Taking over is right for a domain we just started; an attach refuses instead.
        flags = libvirt.VIR_DOMAIN_CONSOLE_FORCE if take_over else libvirt.VIR_DOMAIN_CONSOLE_SAFE
        try:
            host.call(dom.openConsole, None, self._stream, flags)
        except LibvirtFailure as failure:
            if take_over:
                raise
            raise StateConflict(
                f"the console of VM '{dom.name()}' is already attached elsewhere ({failure})"
            ) from None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        libvirt = lib()
        while True:
            try:
                data = self._stream.recv(65536)
            except libvirt.libvirtError:
                data = b""
            if not isinstance(data, bytes) or not data:
                break  # the domain ended, was reverted, or the console was taken over
            with self._changed:
                if self._keep:
                    self.output += data
                self.last_output = time.monotonic()
                self._changed.notify_all()
            self._on_data(data)
        with self._changed:
            self.ended = True
            self._changed.notify_all()
        self._on_data(b"")

    def wait_for(self, text: str, offset: int, timeout: float) -> bool:
        """True once TEXT appeared after OFFSET; False on timeout or when the stream ended
        (the domain stopped, or another client took the console over)."""
        needle = text.encode()
        deadline = time.monotonic() + timeout
        with self._changed:
            while needle not in self.output[offset:]:
                left = deadline - time.monotonic()
                if left <= 0 or self.ended:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    def send(self, data: bytes) -> bool:
        """Send DATA to the guest; False when the console has gone."""
        while data:
            try:
                sent = self._stream.send(data)
            except lib().libvirtError:
                return False
            data = data[sent:] if isinstance(sent, int) and sent > 0 else data
        return True

    def close(self) -> None:
        with contextlib.suppress(lib().libvirtError):
            self._stream.abort()


def lines(output: bytes, count: int) -> list[str]:
    text = output.decode(errors="replace").replace("\r", "")
    return [line for line in text.splitlines() if line.strip()][-count:]


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)  # keys typed while we attached are kept
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _write(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):  # a terminal that went away reads nothing
        os.write(fd, data)


def attach(host: Host, dom: Any) -> str:
    """Relay the console to this terminal (Ctrl-] detaches); without one, send stdin and
    print what the guest says until it has been quiet for a second. Returns why it ended."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    shown = render.for_output(stdout)
    console = Console(host, dom, take_over=False, on_data=lambda data: _write(stdout, shown(data)))
    interactive = os.isatty(stdin)
    try:
        with _raw_terminal(stdin) if interactive else contextlib.nullcontext():
            if interactive:
                banner = b"Connected to the serial console; Ctrl-] detaches.\r\n"
                _write(sys.stderr.fileno(), banner)
            input_ended: float | None = None
            while True:
                if console.ended:
                    return "console closed"
                if input_ended is not None:
                    quiet = time.monotonic() - max(input_ended, console.last_output)
                    if quiet >= IDLE_AFTER_INPUT:
                        return "input ended"
                    time.sleep(0.05)
                    continue
                ready, _, _ = select.select([stdin], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(stdin, 4096)
                if interactive and DETACH in data:
                    console.send(data.split(DETACH, 1)[0])
                    return "detached"
                if not data:
                    input_ended = time.monotonic()
                    continue
                if not console.send(data):
                    return "console closed"
    finally:
        console.close()
