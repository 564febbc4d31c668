"""The serial console's log: reading it, and waiting for a text in it (``serial`` attaches
a terminal or a program to the console itself)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from clan_vm_tasks import render

if TYPE_CHECKING:
    import subprocess

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


def follow(
    log: Path, offset: int, child: subprocess.Popen[bytes], on_interrupt: Callable[[], None]
) -> None:
    """Show LOG from OFFSET on stdout while CHILD (a foreground QEMU) runs; Ctrl-C, SIGTERM
    and SIGHUP (the terminal closed) call ON_INTERRUPT, which stops it."""

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    shown = render.for_output(sys.stdout.fileno())

    def show(chunk: bytes) -> None:
        with contextlib.suppress(OSError):  # a terminal that went away reads nothing
            os.write(sys.stdout.fileno(), shown(chunk))

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while child.poll() is None:
            try:
                chunk = read_from(log, offset)
                offset += len(chunk)
                show(chunk)
                time.sleep(0.05)
            except KeyboardInterrupt:
                on_interrupt()
                break
        child.wait()
        show(read_from(log, offset))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
