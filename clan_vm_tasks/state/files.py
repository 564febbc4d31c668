"""Crash-safe file primitives: private directories, atomic writes, advisory locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from clan_vm_tasks.errors import Busy, ClanVMError


def private_dir(path: Path) -> Path:
    """Create PATH (and parents) so that only we can enter it; tighten it if it exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise ClanVMError(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise ClanVMError(f"{path} belongs to another user; refusing to use it")
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(0o700)
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, tmp_dir: Path | None = None) -> None:
    """Replace PATH with DATA so that readers see the old or the new file, never a mix.

    The temporary file goes to TMP_DIR (same file system) when given, so that what a
    killed writer leaves behind is found in one place; it is named after our pid. It is
    made exclusively (never through a link someone planted, which might be the case in a
    directory that is not ours, such as where ``boot-test --junit`` writes) and renamed
    only while it is still the file made.
    """
    if tmp_dir is not None:
        tmp = tmp_dir / f"{os.getpid()}.{os.urandom(4).hex()}.tmp"
    else:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    made = os.fstat(fd)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        now = os.lstat(tmp)
        if (now.st_dev, now.st_ino) != (made.st_dev, made.st_ino):
            raise ClanVMError(f"{tmp} was replaced while it was written; {path} is unchanged")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(tmp).st_ino == made.st_ino:
                os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _open_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on the file now at PATH, or None if it is busy.

    A lock file may be removed by whoever holds it (a VM that no longer exists), so after
    locking we check that the file we locked is still the one at PATH.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # removed (and maybe re-created) while we waited: lock the new one


Locked = contextlib.AbstractContextManager[int]


@contextlib.contextmanager
def locked(path: Path, what: str, timeout: float) -> Iterator[int]:
    """Hold an exclusive flock on PATH; give up with a clear error after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while (fd := _open_lock(path)) is None:
        if time.monotonic() >= deadline:
            raise Busy(what)
        time.sleep(0.02)
    try:
        yield fd
    finally:
        os.close(fd)


def try_lock(path: Path) -> int | None:
    """A held exclusive flock's fd, or None when somebody else holds it."""
    return _open_lock(path)
