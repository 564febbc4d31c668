"""Disk images on this machine through ``qemu-img`` (and ``mkfs`` for a formatted root
file system): used by both backends, since a VM on a libvirt host gets a root file
system made here too."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import ClanVMError, InvalidInput

QEMU_IMG = "qemu-img"


def die_with_parent() -> None:
    """In a child before exec: be killed when the command that started it dies (a killed
    command leaves no qemu-img running)."""
    import ctypes  # lazy: only children of disk operations need it

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _qemu_img(*args: str, ok: tuple[int, ...] = (0,)) -> str:
    """Run qemu-img; exit codes in OK count as success."""
    import sh  # lazy: only disk operations pay for it

    try:
        command = sh.Command(QEMU_IMG)
    except sh.CommandNotFound:
        raise ClanVMError("qemu-img not found: install QEMU's tools (Debian: qemu-utils)") from None
    try:
        output = command(
            *args,
            _tty_out=False,
            _env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
            _preexec_fn=die_with_parent,
            _ok_code=list(ok),
        )
        return str(output)
    except sh.ErrorReturnCode as error:
        message = error.stderr.decode(errors="replace").strip().splitlines()
        raise ClanVMError(
            f"qemu-img {args[0]} failed: {message[-1] if message else error}"
        ) from None
    except (OSError, sh.ForkException) as error:  # it could not even be run
        # sh reports a failed exec with the child's traceback: its last line says why.
        why = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ClanVMError(
            f"qemu-img {args[0]} could not run: {why[-1] if why else error}"
        ) from None


def create(path: Path, size_mib: int) -> None:
    # Metadata preallocation: the image stays sparse but never grows its tables mid-write.
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", str(path), f"{size_mib}M"
    )


def create_formatted(path: Path, size_mib: int, fstype: str, label: str) -> None:
    """A qcow2 disk holding one file system (no partition table), made on the host without
    loop devices, as nixpkgs' qemu-vm.nix does: a raw image, ``mkfs``, converted to qcow2.
    The root directory belongs to root, whoever runs this."""
    raw = path.with_name(path.name + ".raw")
    try:
        _qemu_img("create", "-q", "-f", "raw", str(raw), f"{size_mib}M")
        _mkfs(fstype, label, raw)
        _qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path))
    finally:
        raw.unlink(missing_ok=True)


def _mkfs(fstype: str, label: str, target: Path) -> None:
    program = f"mkfs.{fstype}"
    found = shutil.which(program, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        raise ClanVMError(
            f"{program} not found: it makes rootFilesystem (Debian: apt install e2fsprogs)"
        )
    argv = [found, "-q", "-F", "-L", label, "-E", "root_owner=0:0", str(target)]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, check=False, preexec_fn=die_with_parent
        )
    except OSError as error:
        raise ClanVMError(f"{program} could not run: {error}") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise ClanVMError(f"{program} failed: {lines[-1] if lines else result.returncode}")


def info(path: Path) -> dict[str, Any]:
    """``qemu-img info`` of one of our qcow2 disks (the format is given, never probed)."""
    data = json.loads(_qemu_img("info", "-f", "qcow2", "--output=json", "--force-share", str(path)))
    if not isinstance(data, dict):
        raise ClanVMError(f"qemu-img info {path} returned no object")
    return data


def described(path: Path, *, backing: bool = False) -> dict[str, Any]:
    """One of our disks as ``show`` lists it, sizes in MiB (rounded up) like every size the
    tool shows; what cannot be known (no image) is None."""
    disk = info(path) if path.exists() else {}
    return {
        "path": disk.get("filename", str(path)),
        "format": disk.get("format"),
        "virtual_size": _mib(disk.get("virtual-size")),
        "actual_size": _mib(disk.get("actual-size")),
        "backing_file": disk.get("full-backing-filename", disk.get("backing-filename"))
        if backing
        else None,
        "backing_format": disk.get("backing-filename-format") if backing else None,
    }


@dataclass(frozen=True)
class BaseImage:
    path: Path
    format: str  # "qcow2" or "raw"
    size: int  # virtual size in bytes


def inspect_base(path: Path) -> BaseImage:
    """Check a base image before a disk is laid over it.

    Its format has to be found by looking at it, so the whole backing chain is inspected:
    only a qcow2 or raw image that refers to no other file is accepted. A qcow2 header
    can name any host file as its backing or data file (say /etc/shadow as raw), and
    other formats (vmdk descriptors) can name extents anywhere.
    """
    chain = json.loads(
        _qemu_img("info", "--backing-chain", "--output=json", "--force-share", str(path))
    )
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], dict):
        raise ClanVMError(f"qemu-img info {path} returned no image")
    first = chain[0]
    fmt = str(first.get("format"))
    if fmt not in ("qcow2", "raw"):
        raise InvalidInput(f"base image {path} is a {fmt} image; use a qcow2 or raw image")
    backing = first.get("full-backing-filename") or first.get("backing-filename")
    if len(chain) > 1 or backing:
        raise InvalidInput(
            f"base image {path} refers to another file ({backing}); a base image must be "
            "self-contained (qemu-img convert -O qcow2 it first)"
        )
    data_file = first.get("format-specific", {}).get("data", {}).get("data-file")
    if data_file:
        raise InvalidInput(f"base image {path} keeps its data in another file ({data_file})")
    return BaseImage(path, fmt, int(first["virtual-size"]))


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

    No preallocation and no copy, so creation takes the same time for any base size. The
    base's format goes into the overlay, so QEMU never probes the base either.
    """
    checked = inspect_base(base)
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-b", str(base), "-F", checked.format, str(path),
        f"{size_mib}M",
    )  # fmt: skip


def mib_ceil(size: int) -> int:
    return -(-size // (1 << 20))


def _mib(size: Any) -> int | None:
    return mib_ceil(size) if isinstance(size, int) else None


def size_mib_ceil(path: Path) -> int:
    """The virtual size of one of our disks in MiB, rounded up."""
    return mib_ceil(int(info(path)["virtual-size"]))


def snapshots(path: Path) -> list[dict[str, Any]]:
    """The internal snapshots of a qcow2 image, as qemu-img reports them."""
    found = info(path).get("snapshots", [])
    return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []


def snapshot(path: Path, action: str, tag: str) -> None:
    """``qemu-img snapshot``: -c creates, -a applies (reverts to), -d deletes the snapshot TAG."""
    assert action in ("-c", "-a", "-d")
    # qemu-img snapshot has no -f: the format goes in as image options, never probed.
    options = f"driver=qcow2,file.filename={str(path).replace(',', ',,')}"
    _qemu_img("snapshot", action, tag, "--image-opts", options)


def repair(path: Path) -> str | None:
    """Check one of our disks after an interrupted qemu-img and repair what an interruption
    leaves (leaked clusters, stale copied flags); what was repaired, None if nothing."""
    # Exit codes: 0 clean, 2 corruptions left, 3 only leaks left (repaired ones count 0).
    report = json.loads(
        _qemu_img("check", "-f", "qcow2", "-r", "all", "--output=json", str(path), ok=(0, 2, 3))
    )
    fixed = {k: int(report.get(k, 0)) for k in ("corruptions-fixed", "leaks-fixed")}
    left = int(report.get("corruptions", 0))
    if left:
        raise ClanVMError(f"{path} has {left} corruptions that qemu-img check cannot repair")
    if not any(fixed.values()):
        return None
    return f"repaired {fixed['corruptions-fixed']} corruptions, {fixed['leaks-fixed']} leaks"
