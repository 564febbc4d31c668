"""``--wait-for``'s look at the console log: text written in pieces, after an offset, and
text that lands just before QEMU exits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from clan_vm_tasks.backends.qemu.console import wait_for_text


def _write_slowly(log: Path, pieces: list[bytes]) -> threading.Thread:
    def write() -> None:
        with log.open("ab") as f:
            for piece in pieces:
                time.sleep(0.03)  # a look in between each piece
                f.write(piece)
                f.flush()

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_text_split_across_writes_is_found_after_the_offset(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"old boot: clan-guest: READY\n")  # before the offset: not this boot
    offset = log.stat().st_size
    writer = _write_slowly(log, [b"booting...\nclan-gu", b"est: RE", b"ADY\n"])
    try:
        assert wait_for_text(log, "clan-guest: READY", offset, 10, lambda: True)
    finally:
        writer.join()
    assert not wait_for_text(log, "never", offset, 0.2, lambda: True)


def test_a_log_made_after_the_wait_began_is_read(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    writer = _write_slowly(log, [b"", b"READY\n"])
    try:
        assert wait_for_text(log, "READY", 0, 10, lambda: True)
    finally:
        writer.join()


def test_a_vm_that_ended_is_looked_at_once_more(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"")
    ended = threading.Event()

    def alive() -> bool:
        if ended.is_set():
            return False
        log.write_bytes(b"last words: READY\n")  # lands as QEMU goes
        ended.set()
        return False

    assert wait_for_text(log, "READY", 0, 10, alive)
    log.write_bytes(b"something else\n")
    assert not wait_for_text(log, "READY", 0, 10, lambda: False)
