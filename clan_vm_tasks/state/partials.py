"""What the tool writes into a directory that is not its own (``copy`` out's destination): made
under a name of its own, exclusively and never through a link someone planted there, and put
in place only at the end, by a rename, only while it is still what was made.

Before a partial file or directory is made, a record naming it goes to ``STATE/partials/``,
locked by its writer for as long as it writes. A writer that fails or is interrupted removes
its partial itself; one killed with SIGKILL cannot, so ``sweep`` (at the start of every
command) removes the partial of each record whose writer is gone (its lock can be had), if
what is at that path is still what was recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.state import files

RECORDS = "partials"
SUFFIX = ".partial"
NEW_GRACE = 60.0  # seconds a record being written may stay unlocked
_NAME_BYTES = 200  # of the destination's name in the partial's: the whole stays under 255


class Partial:
    """A partial file (``fd`` open for writing) or directory (``fd`` open on it) next to
    TARGET, under a name nobody else can have chosen."""

    def __init__(self, target: Path, path: Path, fd: int, directory: bool) -> None:
        self.target = target
        self.path = path
        self.fd = fd
        self.directory = directory
        info = os.fstat(fd)
        self._identity = (info.st_dev, info.st_ino)
        self.committed = False

    def still_ours(self) -> bool:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (info.st_dev, info.st_ino) == self._identity

    def commit(self) -> None:
        """Put it in place of TARGET (a file replaces a file; a directory may not replace
        anything), durably."""
        if not self.directory:
            os.fsync(self.fd)
        if not self.still_ours():
            raise ClanVMError(f"{self.path} was replaced while it was written; nothing was copied")
        if self.directory:
            if os.path.lexists(self.target):
                raise ClanVMError(f"{self.target} appeared while the copy ran; it is left as it is")
            os.rename(self.path, self.target)
        else:
            os.replace(self.path, self.target)
        self.committed = True
        files.fsync_dir(self.target.parent)

    def discard(self) -> None:
        if self.committed or not self.still_ours():
            return
        if self.directory:
            import shutil  # lazy: it loads the compression modules

            shutil.rmtree(self.path, ignore_errors=True)  # fd-based: follows no link inside
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _record(record: Path, data: dict[str, object]) -> int:
    """RECORD written whole and locked (it appears under its name only then): its fd."""
    new = record.with_suffix(".new")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _rewrite(fd, data)
        os.rename(new, record)
    except BaseException:
        os.close(fd)
        new.unlink(missing_ok=True)
        raise
    return fd


def _rewrite(fd: int, data: dict[str, object]) -> None:
    """The record's new content in place of the old, so that at every instant it begins with
    one whole JSON document (a writer killed between a truncation and the write would leave
    an empty record, and its partial nobody's): written over the old, then cut to length."""
    new = json.dumps(data).encode()
    os.pwrite(fd, new, 0)
    os.ftruncate(fd, len(new))
    os.fsync(fd)


@contextlib.contextmanager
def partial(state_root: Path, target: Path, *, directory: bool = False) -> Iterator[Partial]:
    """A new partial for TARGET, removed again unless committed inside the block."""
    records = files.private_dir(state_root / RECORDS)
    token = os.urandom(8).hex()  # secrets' own source, without its imports
    stem = os.fsencode(target.name)[:_NAME_BYTES].decode(errors="ignore")
    path = target.parent / f".{stem}.{token}{SUFFIX}"
    record = records / f"{os.getpid()}.{token}.json"
    lock = _record(record, {"path": str(path)})
    made: Partial | None = None
    try:
        if directory:
            os.mkdir(path, 0o700)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path, flags, 0o600)
        made = Partial(target, path, fd, directory)
        _rewrite(lock, {"path": str(path), "dev": made._identity[0], "ino": made._identity[1]})
        yield made
    finally:
        try:
            if made is not None:
                made.discard()
                os.close(made.fd)
        finally:
            os.unlink(record)
            os.close(lock)


def sweep(state_root: Path) -> None:
    """Remove the partials of writers that are gone (see the module's docstring)."""
    records = state_root / RECORDS
    try:
        entries = os.listdir(records)
    except FileNotFoundError:
        return
    for entry in entries:
        writer = entry.split(".", 1)[0]
        alive = writer.isdigit() and os.path.exists(f"/proc/{writer}")
        if entry.endswith(".new") and alive and _younger(records / entry, NEW_GRACE):
            continue  # its writer may be about to lock it
        fd = files.try_lock(records / entry)
        if fd is None:
            continue  # its writer is still at work
        try:
            # The first document: what a shorter rewrite has not cut yet follows it.
            data = json.JSONDecoder().raw_decode(os.read(fd, 1 << 16).decode() or "{}")[0]
            _remove_left(data if isinstance(data, dict) else {})
            os.unlink(records / entry)
        except (OSError, ValueError):
            pass  # tried again by the next command
        finally:
            os.close(fd)


def _younger(path: Path, seconds: float) -> bool:
    try:
        return time.time() - os.lstat(path).st_mtime < seconds
    except FileNotFoundError:
        return True


def _remove_left(data: dict[str, object]) -> None:
    path = data.get("path")
    if not isinstance(path, str) or not path.endswith(SUFFIX):
        return
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if "ino" in data:
        if (info.st_dev, info.st_ino) != (data.get("dev"), data.get("ino")):
            return  # not what was made there
    elif info.st_uid != os.getuid():  # killed before it could record what it made
        return
    if stat.S_ISDIR(info.st_mode):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    elif stat.S_ISREG(info.st_mode):
        os.unlink(path)
