"""The host directories a VM shares, opened once for its launch.

QEMU gets a 9p share's directory as ``/proc/self/fd/N`` of a descriptor it inherits, so it
shares the directory that was opened and checked here, never whatever its name leads to a
moment later. A virtiofs share's virtiofsd is started in that directory (its working
directory, set through the same descriptor), which its mount namespace carries over and it
bind-mounts as ``.``: no name is looked up again either. A share whose definition pins the
directory (``identity``, set when it was checked and allowed) is refused when its source
now leads to another one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from clan_vm_tasks.errors import ClanVMError, InvalidInput

if TYPE_CHECKING:
    from clan_vm_tasks.models import VMConfig


def fd_path(fd: int) -> Path:
    return Path(f"/proc/self/fd/{fd}")


def _open(name: str, tag: str, source: Path, identity: str | None) -> int:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise ClanVMError(
            f"share '{tag}' of VM '{name}': cannot open {source}: {error.strerror}"
        ) from None
    info = os.fstat(fd)
    if identity is not None and f"{info.st_dev}:{info.st_ino}" != identity:
        os.close(fd)
        raise InvalidInput(
            f"share '{tag}' of VM '{name}': {source} no longer leads to the directory that "
            f"was checked and allowed (device:inode {identity}), but to "
            f"{os.path.realpath(source)}; start it again to be asked about that one"
        )
    return fd


@contextlib.contextmanager
def opened(config: VMConfig) -> Iterator[tuple[VMConfig, tuple[int, ...]]]:
    """CONFIG with each share's source replaced by its directory opened here, as
    /proc/self/fd/N (closed after the block), and pinned to it (its device and inode); the
    descriptors of the 9p shares, to pass on to QEMU. A virtiofs share's descriptor is
    close-on-exec: its virtiofsd is started in the directory, not given it."""
    fds: list[int] = []
    for_qemu: list[int] = []
    try:
        shares = dict(config.shares)
        for tag, share in sorted(config.shares.items()):
            if share.source is None:
                continue
            fd = _open(config.name, tag, share.source, share.identity)
            fds.append(fd)
            if share.type != "virtiofs":
                for_qemu.append(fd)
            info = os.fstat(fd)
            identity = f"{info.st_dev}:{info.st_ino}"
            shares[tag] = replace(share, source=fd_path(fd), identity=identity)
        yield replace(config, shares=shares), tuple(for_qemu)
    finally:
        for fd in fds:
            os.close(fd)
