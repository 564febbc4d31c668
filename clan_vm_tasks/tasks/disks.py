"""The disk tasks: snapshot, revert, snapshots, resize, kept-disks."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from clan_vm_tasks import render
from clan_vm_tasks.names import check_name
from clan_vm_tasks.tasks.common import NAME_HELP, number, on_host, open_store, say, vm_task

if TYPE_CHECKING:
    from invoke.context import Context


@vm_task(
    examples=["snapshot web before-upgrade", "snapshot web before-upgrade --delete"],
    help={
        "name": NAME_HELP,
        "snap": "name of the snapshot",
        "delete": "delete the snapshot instead of taking it",
        "live": "require a running VM (snapshot with memory state); fail if it is stopped",
    },
)
def snapshot(c: Context, name: str, snap: str, delete: bool = False, live: bool = False) -> None:
    """Take a snapshot of a VM (with memory while it runs).

    Take a snapshot: with memory state if the VM runs, of the disk if it is stopped."""
    from clan_vm_tasks.vm import snapshots

    check_name(name)
    store, _ = open_store()
    if delete:
        snapshots.delete(store, name, snap)
        say(f"deleted snapshot '{snap}' of VM '{name}'")
        return
    taken = snapshots.take(store, name, snap, live=live)
    what = "with memory state" if taken.memory else "of the disk"
    say(f"took snapshot '{snap}' of VM '{name}'{on_host(store.host_of(name))} {what}")


@vm_task(
    help={"name": NAME_HELP, "snap": "name of the snapshot"},
    examples=["revert web before-upgrade"],
)
def revert(c: Context, name: str, snap: str) -> None:
    """Revert a VM to one of its snapshots.

    Revert a VM to a snapshot: a running VM gets memory and disk back, a stopped one its disk."""
    from clan_vm_tasks.vm import snapshots

    check_name(name)
    store, _ = open_store()
    target, status = snapshots.revert(store, name, snap)
    if status in ("running", "paused"):
        where = on_host(store.host_of(name))
        say(f"reverted VM '{name}'{where} to snapshot '{snap}' (memory and disk); it is {status}")
    else:
        note = " (its memory state is only restored into a running VM)" if target.memory else ""
        say(f"reverted the disk of VM '{name}' to snapshot '{snap}'{note}")


@vm_task(help={"name": NAME_HELP, "json": "print a JSON array"}, examples=["snapshots web"])
def snapshots(c: Context, name: str, json: bool = False) -> None:
    """List a VM's snapshots: name, date, size of saved memory state."""
    from clan_vm_tasks.vm import snapshots as snaps

    check_name(name)
    store, _ = open_store(create=False)
    found = snaps.list_snapshots(store, name)
    if json:
        say(render.as_json([s.as_dict() for s in found]))
        return
    if not found:
        say(f"VM '{name}' has no snapshots")
        return
    say(
        render.table(
            ["NAME", "DATE", "MEMORY", "VM STATE SIZE"],
            [
                [s.name, s.date, "yes" if s.memory else "no", f"{s.vm_state_size >> 20} MiB"]
                for s in found
            ],
        )
    )


@vm_task(
    help={"name": NAME_HELP, "disk": "new disk size in MiB (only growing is allowed)"},
    examples=["resize web --disk 40960"],
)
def resize(c: Context, name: str, disk: str | None = None) -> None:
    """Grow the disk of a stopped VM."""
    from clan_vm_tasks.errors import InvalidInput
    from clan_vm_tasks.vm.resize import resize as resize_vm

    check_name(name)
    if disk is None:
        raise InvalidInput("resize needs --disk MIB")
    size = number(disk, "disk", 0)
    store, _ = open_store()
    old, new = resize_vm(store, name, size)
    if old == new:
        say(f"the disk of VM '{name}' already is {new} MiB")
    else:
        say(f"grew the disk of VM '{name}' from {old} MiB to {new} MiB")


@vm_task(
    name="kept-disks",
    iterable=["remove"],
    examples=["kept-disks", "kept-disks --older-than 30"],
    help={
        "json": "print a JSON array",
        "remove": "remove this kept disk (a path as listed; repeatable)",
        "older_than": "remove the kept disks kept more than this many days ago (0: all)",
    },
)
def kept_disks(
    c: Context, json: bool = False, remove: list[str] | None = None, older_than: str | None = None
) -> None:
    """List or remove the disks kept from deleted VMs.

    List the disks kept from deleted VMs (VM, size on disk, when kept, path), or remove them."""
    from clan_vm_tasks.state import history, kept

    days = None
    if older_than is not None:
        zero = re.fullmatch(r"0+(\.0*)?", older_than) is not None  # 0: every kept disk
        days = 0.0 if zero else number(older_than, "older-than", 0, float)
    store, _ = open_store(create=bool(remove) or days is not None)
    if not remove and days is None:
        found = kept.list_kept(store)
        if json:
            say(render.as_json([d.as_dict() for d in found]))
        elif not found:
            say("no kept disks (delete keeps a VM's disk unless --force)")
        else:
            rows = [d.as_dict() for d in found]
            say(
                render.table(
                    ["VM", "SIZE ON DISK", "KEPT", "PATH"],
                    [[r["vm"], f"{r['size_on_disk']} MiB", r["kept_at"], r["path"]] for r in rows],
                )
            )
        return
    # Everything named is checked before anything is removed.
    chosen = [kept.resolve(store, given) for given in remove or []]
    if days is not None:
        chosen += [d for d in kept.older_than(store, days) if d not in chosen]
    removed = []
    for disk in chosen:
        if kept.remove(store, disk):
            removed.append(disk)
            history.record(store.history, disk.vm, "remove-kept-disk", str(disk.path))
    if json:
        say(render.as_json([d.as_dict() for d in removed]))
        return
    for disk in removed:
        say(f"removed kept disk {disk.path} (VM '{disk.vm}', {disk.as_dict()['size_on_disk']} MiB)")
    if not removed:
        say(
            f"no kept disks older than {older_than} days" if days is not None else "nothing removed"
        )
