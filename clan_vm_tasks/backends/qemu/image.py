"""qcow2 disk images through ``qemu-img``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import ClanVMError

QEMU_IMG = "qemu-img"


def _qemu_img(*args: str) -> str:
    import sh  # lazy: only disk operations pay for it

    try:
        command = sh.Command(QEMU_IMG)
    except sh.CommandNotFound:
        raise ClanVMError("qemu-img not found: install QEMU's tools (Debian: qemu-utils)") from None
    try:
        return str(command(*args, _tty_out=False, _env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}))
    except sh.ErrorReturnCode as error:
        message = error.stderr.decode(errors="replace").strip().splitlines()
        raise ClanVMError(
            f"qemu-img {args[0]} failed: {message[-1] if message else error}"
        ) from None


def create(path: Path, size_mib: int) -> None:
    # Metadata preallocation: the image stays sparse but never grows its tables mid-write.
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", str(path), f"{size_mib}M"
    )


def info(path: Path) -> dict[str, Any]:
    data = json.loads(_qemu_img("info", "--output=json", "--force-share", str(path)))
    if not isinstance(data, dict):
        raise ClanVMError(f"qemu-img info {path} returned no object")
    return data


def resize(path: Path, size_mib: int) -> None:
    """Grow a disk image; shrinking would destroy guest data and is refused."""
    current = size_mib_ceil(path)
    if size_mib < current:
        raise ClanVMError(
            f"refusing to shrink {path} from {current} MiB to {size_mib} MiB (data would be lost)"
        )
    if size_mib > current:
        _qemu_img("resize", "-q", "-f", "qcow2", str(path), f"{size_mib}M")


def create_overlay(path: Path, base: Path, size_mib: int) -> None:
    """A copy-on-write disk over BASE: QEMU only ever opens BASE read-only.

    No preallocation and no copy, so creation takes the same time for any base size.
    """
    base_format = str(info(base).get("format", "raw"))
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(path),
        f"{size_mib}M",
    )  # fmt: skip


def size_mib_ceil(path: Path) -> int:
    """The virtual size of an image in MiB, rounded up (a base image need not be MiB-aligned)."""
    return -(-int(info(path)["virtual-size"]) // (1 << 20))


def snapshots(path: Path) -> list[dict[str, Any]]:
    """The internal snapshots of a qcow2 image, as qemu-img reports them."""
    found = info(path).get("snapshots", [])
    return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []


def snapshot(path: Path, action: str, tag: str) -> None:
    """``qemu-img snapshot``: -c creates, -a applies (reverts to), -d deletes the snapshot TAG."""
    assert action in ("-c", "-a", "-d")
    _qemu_img("snapshot", action, tag, str(path))
