"""Deleting a VM: renamed away in one step, its disk kept unless forced."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from clan_vm_tasks.errors import StateConflict
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import files, history
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import machines, reconcile
from clan_vm_tasks.vm.stop import halt


def delete(store: Store, name: str, *, force: bool = False, notify: Notify = notice) -> Path | None:
    """Remove a VM. Without FORCE a running VM is refused and the disk is kept (path returned)."""
    store.require(name)
    with store.lock(name):
        paths = store.require(name)
        state = reconcile.current(store, name, locked=True)
        if state.status in reconcile.ACTIVE:
            if not force:
                raise StateConflict(f"VM '{name}' is running; stop it first or use --force")
            halt(store, name, state, force=True, timeout=0, notify=notify)
        elif state.tap:  # left behind by a crash
            machines.machine(store, name, state).release(state)
        kept = None
        if not force and paths.disk.exists():
            kept_dir = files.private_dir(store.root / "kept-disks")
            stamp = time.strftime("%Y%m%dT%H%M%S")
            kept = kept_dir / f"{name}-{stamp}.qcow2"
            os.rename(paths.disk, kept)
        doomed = store.staging_dir(name, "deleting")
        os.rename(paths.dir, doomed)  # atomic: the VM is gone, what remains is garbage
        files.fsync_dir(store.vms)
        shutil.rmtree(doomed, ignore_errors=True)
        shutil.rmtree(paths.run, ignore_errors=True)
    details = f"disk kept at {kept}" if kept else "disk removed"
    history.record(store.history, name, "delete", details)
    return kept
