"""What a VM has beside its root disk: extra disks and directories of its own (the shares
that name no source). Made with the VM and when a changed definition declares them; disks
grow with the definition and never shrink, and are kept like the root disk when the VM is
deleted without ``--force``; its own share directories go with the VM."""

from __future__ import annotations

from pathlib import Path

from clan_vm_tasks.models import ExtraDisk, VMConfig
from clan_vm_tasks.render import Notify
from clan_vm_tasks.state.store import Store, VMPaths
from clan_vm_tasks.vm import machines


def make(vm_dir: Path, config: VMConfig) -> None:
    """Create the extra disks and share directories CONFIG declares that VM_DIR lacks."""
    paths = VMPaths(vm_dir)
    for name, disk in sorted(config.extra_disks.items()):
        if not paths.extra_disk(name).exists():
            machines.backend(config.host).create_disk(paths.extra_disk(name), disk.size, None)
    for tag, share in sorted(config.shares.items()):
        if share.source is None:
            paths.share_dir(tag).mkdir(parents=True, exist_ok=True, mode=0o755)


def never_shrink(old: VMConfig, new: VMConfig, notify: Notify) -> VMConfig:
    """NEW with no disk smaller than OLD's: a disk keeps its size, and the user learns how to
    shrink it (there is no way without losing its data)."""
    name = new.name
    how = f"to shrink it, delete the VM and start it again: clan-vm-manager delete {name} --force"
    update: dict[str, object] = {}
    if new.disk_size < old.disk_size:
        notify(
            f"warning: VM '{name}' keeps its {old.disk_size} MiB disk, larger than the "
            f"{new.disk_size} MiB declared, as a disk never shrinks ({how}; its data is lost)"
        )
        update["disk_size"] = old.disk_size
    disks = dict(new.extra_disks)
    for disk_name, disk in new.extra_disks.items():
        before = old.extra_disks.get(disk_name)
        if before is not None and disk.size < before.size:
            notify(
                f"warning: VM '{name}' keeps its {before.size} MiB extra disk '{disk_name}', "
                f"larger than the {disk.size} MiB declared, as a disk never shrinks ({how})"
            )
            disks[disk_name] = ExtraDisk(size=before.size)
    if disks != new.extra_disks:
        update["extra_disks"] = disks
    return new.model_copy(update=update) if update else new


def grow(store: Store, old: VMConfig, new: VMConfig) -> None:
    """Grow the extra disks of a stopped VM that NEW declares larger than OLD."""
    from clan_vm_tasks.backends.qemu import image

    paths = store.paths(new.name)
    for name, disk in sorted(new.extra_disks.items()):
        before = old.extra_disks.get(name)
        if before is not None and disk.size > before.size:
            image.resize(paths.extra_disk(name), disk.size)


def dropped(old: VMConfig, new: VMConfig, paths: VMPaths, notify: Notify) -> None:
    """Say where the data of extra disks and own share directories no longer declared stays."""
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


def keep(staging: Path, store: Store, name: str) -> list[Path]:
    """On delete without --force: move the extra disks of a VM being deleted (in STAGING) to
    the kept disks; returns where they went."""
    kept = []
    for disk in sorted(staging.glob("disk-*.qcow2")):
        extra = disk.name.removeprefix("disk-").removesuffix(".qcow2")
        kept.append(store.keep_disk(disk, f"{name}-{extra}"))
    return kept
