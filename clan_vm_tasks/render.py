"""Human-readable output: aligned tables and key/value blocks."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading

Notify = Callable[[str], None]  # how operations report progress and warnings
# Terminal control sequences and characters a console line may carry (colours, \r).
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x00-\x08\x0b-\x1f\x7f]")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def state_word(info: dict[str, Any]) -> str:
    word = str(info["state"])
    if word == "unreachable" and info.get("error"):
        return f"{word}: {info['error']}"
    if info.get("pid"):
        word += f" (pid {info['pid']})"
    if info.get("qmp") is False:
        word += ", QMP not answering"
    return word


def key_values(pairs: Sequence[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k + ':':<{width + 1}} {'-' if v is None else v}" for k, v in pairs)


def notice(message: str) -> None:
    """The default Notify: one line on stderr, at once (above a progress line, if one shows)."""
    shown = _PROGRESS
    if shown is None:  # no progress asked for: nothing to draw around
        print(message, file=sys.stderr, flush=True)
        return
    with shown.lock:
        shown.clear()
        print(message, file=sys.stderr, flush=True)
        shown.draw()


class Progress:
    """What a long command is doing, as it happens. On a terminal: one status line on stderr,
    rewritten as things move (the phase, its latest detail, the seconds it has taken).
    Without one (logs, CI): a plain line for each step worth a line (``step``), nothing else.
    Quiet: nothing. The Nix and VM code report to ``progress()``; tasks choose the mode."""

    def __init__(self, *, quiet: bool = True, live: bool | None = None) -> None:
        import threading  # lazy, like the whole object: most commands show no progress

        self.quiet = quiet
        self.live = not quiet and (sys.stderr.isatty() if live is None else live)
        self.lock = threading.RLock()
        self._phase = ""
        self._detail = ""
        self._began = time.monotonic()
        self._shown = False
        self._ticker: threading.Thread | None = None

    def phase(self, text: str) -> None:
        """A new phase (evaluating, building, creating, booting): the status line only."""
        with self.lock:
            self._phase, self._detail, self._began = text, "", time.monotonic()
            self._start_ticker()
            self.draw()

    def detail(self, text: str) -> None:
        """The latest detail of the phase (the derivation being built, a console line)."""
        with self.lock:
            self._detail = " ".join(_CONTROL.sub(" ", text).split())
            self.draw()

    @contextlib.contextmanager
    def following(self, path: Path, phase: str) -> Iterator[None]:
        """While the block runs (a boot): PHASE, with the latest line of the file at PATH as
        its detail."""
        if not self.live:
            yield
            return
        self.phase(phase)
        try:
            with latest_line(path, self.detail):
                yield
        finally:
            self.done()

    def step(self, text: str) -> None:
        """A line worth keeping in a log too (a build that starts): printed in both modes."""
        if self.quiet:
            return
        notice(text)

    def done(self) -> None:
        with self.lock:
            self.clear()
            self._phase = self._detail = ""

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self._shown = False

    def draw(self) -> None:
        if not (self.live and self._phase):
            return
        seconds = time.monotonic() - self._began
        text = self._phase + (f": {self._detail}" if self._detail else "")
        text += f" ({seconds:.0f}s)" if seconds >= 1 else ""
        import shutil

        width = shutil.get_terminal_size((100, 20)).columns - 1
        line = text if len(text) <= width else text[: max(0, width - 3)] + "..."
        sys.stderr.write("\r\x1b[2K" + line)
        sys.stderr.flush()
        self._shown = True

    def _start_ticker(self) -> None:
        if not self.live or self._ticker is not None:
            return

        def tick() -> None:
            while True:
                time.sleep(0.5)
                with self.lock:
                    self.draw()

        import threading

        self._ticker = threading.Thread(target=tick, daemon=True)
        self._ticker.start()


_PROGRESS: Progress | None = None  # made on first use


def progress() -> Progress:
    """The progress of the running command (silent unless a task asked for it)."""
    global _PROGRESS
    if _PROGRESS is None:
        _PROGRESS = Progress()
    return _PROGRESS


def show_progress(quiet: bool) -> Progress:
    """Make the running command show its progress (a status line on a terminal)."""
    global _PROGRESS
    _PROGRESS = Progress(quiet=quiet)
    return _PROGRESS


class WithoutQueries:
    """A guest's console output for a file or a pipe, without the terminal queries in it
    (a shell's cursor position request ``ESC [6n``, a device attributes request ``ESC [c``):
    nothing there answers them, and they are not text. A sequence split between two
    chunks is held back until the next one shows what it is (one never finished is not
    text either)."""

    _QUERY = re.compile(rb"\x1b\[[?>=]?[0-9;]*[nc]|\x1bZ")
    _UNFINISHED = re.compile(rb"\x1b(\[[?>=]?[0-9;]*)?$")

    def __init__(self) -> None:
        self._held = b""

    def __call__(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        unfinished = self._UNFINISHED.search(data)
        cut = unfinished.start() if unfinished else len(data)
        self._held = data[cut:]
        return self._QUERY.sub(b"", data[:cut])


def for_output(fd: int) -> Callable[[bytes], bytes]:
    """How console output is written to FD: as it is on a terminal, else without queries."""
    return (lambda chunk: chunk) if os.isatty(fd) else WithoutQueries()


@contextlib.contextmanager
def latest_line(path: Path, on_line: Callable[[str], None], every: float = 0.2) -> Iterator[None]:
    """While the block runs: ON_LINE(the latest non-empty line of the file at PATH, control
    sequences taken out) whenever it changes, once that file is a new one (a boot starts a
    new console log, and the one before must not be shown as this boot's)."""
    import threading

    stop = threading.Event()

    def watch() -> None:
        try:
            before: int | None = os.stat(path).st_ino
        except OSError:
            before = None
        said = ""
        while not stop.wait(every):
            try:
                info = os.stat(path)
                if info.st_ino == before:
                    continue
                with open(path, "rb") as log:
                    log.seek(max(0, info.st_size - 4096))
                    tail = log.read().decode(errors="replace")
            except OSError:
                continue
            text = _CONTROL.sub("", tail.replace("\r", "\n"))
            lines = [line for line in text.splitlines() if line.strip()]
            if lines and lines[-1] != said:
                said = lines[-1]
                on_line(said)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
