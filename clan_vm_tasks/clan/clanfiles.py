"""Files of a clan directory, which may be shared with others: its lock files, made
exclusively or opened as they are, never through a planted link; inventory.json written
atomically through a temporary file that is renamed only while it is still the one made."""

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from clan_vm_tasks.errors import ClanVMError


class InventoryError(ClanVMError):
    """A problem with inventory.json or committing it; the message is one readable line."""


def _open_lock(lock_path: Path) -> int:
    """The lock file at LOCK_PATH, made exclusively or opened as it is, never through a
    symbolic link (someone else may have planted one there) and never truncated."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            fd = os.open(lock_path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            fd = os.open(lock_path, flags)  # another process's (clan's, ours): shared
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InventoryError(
                f"lock file {lock_path} is a symbolic link; refusing to follow it (remove it)"
            ) from None
        raise InventoryError(f"cannot open lock file {lock_path}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InventoryError(f"lock file {lock_path} is not a regular file (remove it)")
    return fd


@contextmanager
def flocked(lock_path: Path) -> Iterator[None]:
    fd = _open_lock(lock_path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the flock


def write_atomic(path: Path, text: str) -> None:
    # Replace a symlink's target, not the link (clan's open("w") follows links too), but only
    # a link of the user's own: one another user planted is not followed.
    if path.is_symlink():
        if path.lstat().st_uid != os.getuid():
            raise InventoryError(
                f"{path} is a symbolic link of another user; refusing to follow it"
            )
        path = path.resolve()
    directory = path.parent
    try:
        mode: int | None = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None
    tmp = directory / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        # A new file gets 0o666 minus umask, like any file created with open().
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        made = (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)  # the umask must not narrow the user's chosen mode
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        if (os.lstat(tmp).st_dev, os.lstat(tmp).st_ino) != made:
            raise OSError(f"{tmp} was replaced while it was written")
        tmp.replace(path)  # atomic rename over the old file
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with suppress(OSError):
            tmp.unlink()
        raise InventoryError(f"cannot write {path}: {exc.strerror or exc}") from exc
