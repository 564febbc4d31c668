"""Clearing what killed commands left in the state directory, at the start of the next
command of any name: temporary files of dead writers, lock files of VMs that do not exist,
and the partial files a killed ``copy`` left outside the state directory (``partials``).
Half-created and half-deleted VMs are ``vm.leftovers``'s."""

from __future__ import annotations

import os

from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import files, partials
from clan_vm_tasks.state.store import Store


def sweep(store: Store, warn: Notify = notice) -> None:
    _sweep_tmp(store)
    _sweep_locks(store)
    partials.sweep(store.root)


def _sweep_tmp(store: Store) -> None:
    try:
        entries = os.listdir(store.tmp)
    except FileNotFoundError:
        return
    for entry in entries:
        pid = entry.split(".", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            (store.tmp / entry).unlink(missing_ok=True)


def _sweep_locks(store: Store) -> None:
    try:
        entries = os.listdir(store.locks)
    except FileNotFoundError:
        return
    try:
        present = set(os.listdir(store.vms))  # one listing, not a stat per lock file
    except FileNotFoundError:
        present = set()
    for entry in entries:
        name = entry.rpartition(".")[0]  # NAME.lock, NAME.console
        if name in present and store.exists(name):
            continue
        path = store.locks / entry
        fd = files.try_lock(path)
        if fd is not None:
            if not store.exists(name):
                path.unlink(missing_ok=True)  # held: nobody else can be using it
            os.close(fd)
