"""Deleting a VM: renamed away in one step, its disk kept unless forced."""

from __future__ import annotations

import os
import shutil

from clan_vm_tasks.errors import StateConflict
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import files, history
from clan_vm_tasks.state.store import Store, VMPaths
from clan_vm_tasks.vm import machines, reconcile
from clan_vm_tasks.vm.stop import halt


def delete(store: Store, name: str, *, force: bool = False, notify: Notify = notice) -> str | None:
    """Remove a VM. Without FORCE a running VM is refused and the disk is kept (where it is
    kept returned, as messages name it: a path, or the volume on its libvirt host).

    The VM directory is renamed away first, so the VM is gone in one step; the hidden
    directory's name says whether its disk is to be kept, so a command killed after the
    rename is finished by the next one (``recovery``) as it was asked.
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
        backend = machines.backend_of(store, name)  # its definition goes with the rename
        staging = store.staging_dir(name, "deleting" if force else "keeping")
        os.rename(paths.dir, staging)
        files.fsync_dir(store.vms)
        # Failing here leaves the hidden directory: the next command finishes it.
        removed = backend.remove(name, VMPaths(staging), store, keep_disk=not force)
        if removed.extra_disks:
            notify(f"extra disks of '{name}' kept at {', '.join(removed.extra_disks)}")
        details = removed.described(backend.label)  # its definition, which said so, is gone
        history.record(store.history, name, "delete", details)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(paths.run, ignore_errors=True)
    return removed.disk
