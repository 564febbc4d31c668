"""The disks of deleted VMs, kept in ``STATE/kept-disks`` (``Store.keep_disk`` names them
``NAME-TIME[-N].qcow2``): listed, and removed one by one or by age.

Only what ``keep_disk`` made there counts as a kept disk: a regular file directly in that
directory whose name has its form. Anything else named for removal (a link, a directory,
a path outside it or with a ``..``) is refused before anything is removed, and the removal
itself works inside that directory (never through a link), so nothing else can be hit.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.state.store import Store

_KEPT = re.compile(r"(?P<vm>.+)-(?P<stamp>[0-9]{8}T[0-9]{6})(?:-[0-9]+)?\.qcow2")
_STAMP = "%Y%m%dT%H%M%S"  # local time, as keep_disk writes it
DAY = 86400


@dataclass(frozen=True)
class KeptDisk:
    vm: str  # the VM it was kept from (for an extra disk: NAME-DISK)
    path: Path
    size_on_disk: int  # bytes the file takes
    kept_at: float  # seconds since the epoch

    def as_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "path": str(self.path),
            "size_on_disk": -(-self.size_on_disk // (1 << 20)),  # MiB, as every size
            "kept_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.kept_at)),
        }


def _parse(name: str) -> tuple[str, float] | None:
    found = _KEPT.fullmatch(name)
    if found is None:
        return None
    try:
        kept_at = time.mktime(time.strptime(found["stamp"], _STAMP))
    except (ValueError, OverflowError):
        return None
    return found["vm"], kept_at


def _kept(directory: Path, name: str, info: os.stat_result) -> KeptDisk | None:
    parsed = _parse(name)
    if parsed is None or not stat.S_ISREG(info.st_mode):
        return None
    return KeptDisk(parsed[0], directory / name, info.st_blocks * 512, parsed[1])


def list_kept(store: Store) -> list[KeptDisk]:
    """Every kept disk, oldest first."""
    try:
        entries = list(os.scandir(store.kept))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        try:
            disk = _kept(store.kept, entry.name, entry.stat(follow_symlinks=False))
        except FileNotFoundError:
            continue
        if disk is not None:
            found.append(disk)
    return sorted(found, key=lambda d: (d.kept_at, d.path.name))


def resolve(store: Store, given: str) -> KeptDisk:
    """The kept disk GIVEN names (a path, absolute or from the working directory); anything
    else is refused (InvalidInput) and left alone."""
    refused = f"{given} is not a kept disk (see: clan-vm-manager kept-disks)"
    if ".." in Path(given).parts:
        raise InvalidInput(f"{refused}: a path with '..' is not taken")
    path = Path(os.path.abspath(given))
    try:
        inside = os.path.samefile(path.parent, store.kept)
    except OSError:
        inside = False
    if not inside:
        raise InvalidInput(f"{refused}: only files in {store.kept} are")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise InvalidInput(f"{refused}: no such file") from None
    if stat.S_ISLNK(info.st_mode):
        raise InvalidInput(f"{refused}: it is a symbolic link")
    disk = _kept(store.kept, path.name, info)
    if disk is None:
        raise InvalidInput(f"{refused}: not a disk image the tool kept there")
    return disk


def older_than(store: Store, days: float, now: float | None = None) -> list[KeptDisk]:
    limit = (time.time() if now is None else now) - days * DAY
    return [d for d in list_kept(store) if d.kept_at < limit]


def remove(store: Store, disk: KeptDisk) -> bool:
    """Remove DISK, working inside the kept-disks directory (opened without following a
    link) and only if it still is that regular file; False when it is gone already."""
    fd = os.open(store.kept, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            info = os.stat(disk.path.name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{disk.path} is not a kept disk any more; left alone")
        os.unlink(disk.path.name, dir_fd=fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True
