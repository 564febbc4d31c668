"""Deleting a VM: renamed away in one step, its disk kept unless forced."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from clan_vm_tasks.errors import StateConflict
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import files, history
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import extras, machines, reconcile
from clan_vm_tasks.vm.stop import halt


def delete(
    store: Store, name: str, *, force: bool = False, notify: Notify = notice
) -> Path | str | None:
    """Remove a VM. Without FORCE a running VM is refused and the disk is kept (where it is
    kept returned: a path, or for a VM on a libvirt host its volume there).

    The VM directory is renamed away first, so the VM is gone in one step; the hidden
    directory's name says whether its disk is to be kept, so a command killed after the
    rename is finished by the next one (``state.sweep``, and ``hosts`` on its host) as it
    was asked.
    """
    store.require(name)
    with store.lock(name):
        paths = store.require(name)
        state = reconcile.current(store, name, locked=True)
        if state.status in reconcile.ACTIVE:
            if not force:
                raise StateConflict(f"VM '{name}' is running; stop it first or use --force")
            halt(store, name, state, force=True, timeout=0, notify=notify)
        else:  # a crash may have left a tap or sockets behind
            machines.machine(store, name, state).release(state)
        host = store.host_of(name)
        staging = store.staging_dir(name, "deleting" if force else "keeping")
        os.rename(paths.dir, staging)
        files.fsync_dir(store.vms)
        disk = staging / paths.disk.name
        kept: Path | str | None = None
        if host is not None:
            # Failing here leaves the hidden directory: the next command finishes the host side.
            kept = machines.hosted(host).remove(name, store.root, keep_disk=not force)
        elif not force and disk.exists():
            kept = store.keep_disk(disk, name)
        details = f"disk kept at {kept}" if kept else "disk removed"
        if host is None and not force:
            more = extras.keep(staging, store, name)
            if more:
                details += ", extra disks kept at " + ", ".join(map(str, more))
                notify(f"extra disks of '{name}' kept at {', '.join(map(str, more))}")
        if host is not None:
            details += f", on {machines.where(host)}"  # its definition, which says so, is gone
        history.record(store.history, name, "delete", details)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(paths.run, ignore_errors=True)
    return kept
