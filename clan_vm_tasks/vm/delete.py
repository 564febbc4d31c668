"""Deleting a VM: renamed away in one step, its disk kept unless forced."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from clan_vm_tasks.errors import StateConflict
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import files, history
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import machines, reconcile
from clan_vm_tasks.vm.stop import halt


def delete(store: Store, name: str, *, force: bool = False, notify: Notify = notice) -> Path | None:
    """Remove a VM. Without FORCE a running VM is refused and the disk is kept (path returned).

    The VM directory is renamed away first, so the VM is gone in one step; the hidden
    directory's name says whether its disk is to be kept, so a command killed after the
    rename is finished by the next one (``state.sweep``) as it was asked.
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
        staging = store.staging_dir(name, "deleting" if force else "keeping")
        os.rename(paths.dir, staging)
        files.fsync_dir(store.vms)
        disk = staging / paths.disk.name
        kept = store.keep_disk(disk, name) if not force and disk.exists() else None
        details = f"disk kept at {kept}" if kept else "disk removed"
        history.record(store.history, name, "delete", details)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(paths.run, ignore_errors=True)
    return kept
