"""Clearing what killed commands left behind, at the start of the next command of any name.

A create or delete works in a hidden directory ``vms/.PURPOSE-NAME-PID`` under the
VM's lock, so a leftover whose lock can be had belongs to a command that died: a
half-created VM is removed, a half-deleted one is finished (its disk kept when
that was asked for) and its ``delete`` event recorded if it was not. Temporary
files of dead writers and lock files of VMs that do not exist go too, and so do the partial
files a killed ``copy`` left outside the state directory (``partials``).
"""

from __future__ import annotations

import os
import re
import shutil

from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import files, history, partials
from clan_vm_tasks.state.store import Store

_STAGING = re.compile(r"\.(creating|deleting|keeping)-(.+)-(\d+)")


def sweep(store: Store, warn: Notify = notice) -> None:
    try:
        entries = os.listdir(store.vms)
    except FileNotFoundError:
        return  # no state yet: nothing to sweep, and nothing is created
    for entry in entries:
        found = _STAGING.fullmatch(entry)
        if found:
            _finish(store, entry, found.group(1), found.group(2), warn)
    _sweep_tmp(store)
    _sweep_locks(store)
    partials.sweep(store.root)


def _finish(store: Store, entry: str, purpose: str, name: str, warn: Notify) -> None:
    fd = store.try_lock(name)
    if fd is None:
        return  # its command is still at work
    staging = store.vms / entry
    try:
        if purpose != "creating":
            details = "disk removed"
            disk = staging / "disk.qcow2"
            if purpose == "keeping" and disk.exists():
                details = f"disk kept at {store.keep_disk(disk, name)}"
            if purpose == "keeping":  # extra disks (disk-NAME.qcow2) too
                for extra in sorted(staging.glob("disk-*.qcow2")):
                    label = extra.name.removeprefix("disk-").removesuffix(".qcow2")
                    store.keep_disk(extra, f"{name}-{label}")
            # Renamed away at its ctime: an event from then on was recorded by that command.
            if not history.recorded_since(store.history, name, "delete", os.stat(staging).st_ctime):
                history.record(
                    store.history, name, "delete", details + " (finished after an interruption)"
                )
        shutil.rmtree(staging, ignore_errors=True)
    except OSError as error:
        warn(f"warning: could not clear {staging}: {error}")
    finally:
        store.drop_lock_file(name)
        os.close(fd)


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
