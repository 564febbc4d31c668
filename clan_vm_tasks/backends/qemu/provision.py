"""What a VM on this machine has on disk beside its definition, in its own directory: the
root disk (empty, a copy-on-write overlay on its base image, or holding a file system
made here), its extra disks and its own share directories (shares that name no source).

Made with the VM, and when a changed definition declares more; disks grow with the
definition and never shrink; kept (linked under the state directory's kept disks) when
the VM is deleted without ``--force``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clan_vm_tasks.backends import image
from clan_vm_tasks.backends.base import Removed
from clan_vm_tasks.render import Notify

if TYPE_CHECKING:
    from clan_vm_tasks.models import VMConfig
    from clan_vm_tasks.state.store import Store, VMPaths


def provision(config: VMConfig, paths: VMPaths) -> None:
    """The root disk, extra disks and own share directories of a new VM in PATHS."""
    fs = config.root_filesystem
    if fs is not None:
        image.create_formatted(paths.disk, config.disk_size, fs.type, fs.label)
    elif config.base_image is not None:
        image.create_overlay(paths.disk, config.base_image, config.disk_size)
    else:
        image.create(paths.disk, config.disk_size)
    make_missing(config, paths)


def make_missing(config: VMConfig, paths: VMPaths) -> None:
    """The extra disks and own share directories CONFIG declares that PATHS lacks."""
    for name, disk in sorted(config.extra_disks.items()):
        if not paths.extra_disk(name).exists():
            image.create(paths.extra_disk(name), disk.size)
    for tag, share in sorted(config.shares.items()):
        if share.source is None:
            paths.share_dir(tag).mkdir(parents=True, exist_ok=True, mode=0o755)


def update(old: VMConfig, new: VMConfig, paths: VMPaths, notify: Notify) -> None:
    """Grow what NEW declares larger, make what it adds, say where what it drops stays."""
    if new.disk_size != old.disk_size:
        image.resize(paths.disk, new.disk_size)
    for name, disk in sorted(new.extra_disks.items()):
        before = old.extra_disks.get(name)
        if before is not None and disk.size > before.size:
            image.resize(paths.extra_disk(name), disk.size)
    make_missing(new, paths)
    for name in sorted(set(old.extra_disks) - set(new.extra_disks)):
        notify(
            f"notice: VM '{new.name}' no longer has the extra disk '{name}'; its image stays "
            f"at {paths.extra_disk(name)} (declared again, it comes back)"
        )
    for tag in sorted(set(old.shares) - set(new.shares)):
        if old.shares[tag].source is None:
            notify(
                f"notice: VM '{new.name}' no longer shares '{tag}'; its directory stays at "
                f"{paths.share_dir(tag)}"
            )


def keep(name: str, paths: VMPaths, store: Store) -> Removed:
    """On delete without --force: link the disks of VM NAME (renamed away to PATHS) under
    the kept disks, each under a name of its own; the rest goes with PATHS."""
    root = store.keep_disk(paths.disk, name) if paths.disk.exists() else None
    extra = []
    for disk in sorted(paths.dir.glob("disk-*.qcow2")):
        label = disk.name.removeprefix("disk-").removesuffix(".qcow2")
        extra.append(str(store.keep_disk(disk, f"{name}-{label}")))
    return Removed(str(root) if root else None, extra)
