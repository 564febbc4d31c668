"""Signals that end a command become an exception, so that what it made is cleaned up."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from clan_vm_tasks.errors import Interrupted

# Whatever ends a process by default and can be caught (SIGINT is Python's KeyboardInterrupt).
ENDING = (
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
)


@contextlib.contextmanager
def interruptible(signals: tuple[signal.Signals, ...] = ENDING) -> Iterator[None]:
    """Inside the block SIGNALS raise Interrupted (in the main thread; elsewhere the process's
    handlers stay, as only the main thread may set them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
