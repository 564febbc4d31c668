"""Snapshots: of the disk when the VM is stopped, of the whole VM when it runs.

A stopped VM's disk is snapshotted by the backend's image tool. A running (or
paused) VM is snapshotted live, with its memory and device state, so reverting
a running VM brings back the running guest as it was.
"""

from __future__ import annotations

import dataclasses
import re

from clan_vm_tasks.backends.base import Snapshot
from clan_vm_tasks.errors import InvalidInput, StateConflict
from clan_vm_tasks.state import history
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import machines, reconcile
from clan_vm_tasks.vm.recovery import journaled, sync_disk_size

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def check_name(snap: str) -> str:
    # qcow2 looks snapshots up by id or by name: an all-digit name could mean another's id.
    if not _NAME.fullmatch(snap) or snap.isdigit():
        raise InvalidInput(
            f"invalid snapshot name {snap!r}: use letters, digits, '.', '_', '+', '-' "
            "(up to 64, not only digits)"
        )
    return snap


def _find(snaps: list[Snapshot], snap: str, name: str) -> Snapshot:
    for found in snaps:
        if found.name == snap:
            return found
    known = ", ".join(s.name for s in snaps) or "none"
    raise InvalidInput(f"VM '{name}' has no snapshot named '{snap}' (it has: {known})")


def _refuse_taken(snaps: list[Snapshot], snap: str, name: str) -> None:
    if any(s.name == snap for s in snaps):
        raise StateConflict(
            f"VM '{name}' already has a snapshot named '{snap}' "
            f"(delete it first: clan-vm-manager snapshot {name} {snap} --delete)"
        )


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def list_snapshots(store: Store, name: str) -> list[Snapshot]:
    store.require(name)
    with store.lock(name):
        state = reconcile.current(store, name, locked=True)
        machine = machines.machine(store, name, state)
        if state.status in reconcile.ACTIVE:
            return machine.live_snapshots()
        return machine.disk_snapshots()


def take(store: Store, name: str, snap: str, *, live: bool = False) -> Snapshot:
    """Snapshot a VM: with memory state if it runs, its disk only if it is stopped."""
    check_name(snap)
    store.require(name)
    with store.lock(name):
        state = reconcile.current(store, name, locked=True)
        machine = machines.machine(store, name, state)
        active = state.status in reconcile.ACTIVE
        if live and not active:
            raise StateConflict(
                f"VM '{name}' is not running (it is {state.status}); a live snapshot needs "
                "a running VM (without --live a stopped VM's disk is snapshotted)"
            )
        listed = machine.live_snapshots if active else machine.disk_snapshots
        with (
            history.failures_recorded(store.history, name, "snapshot"),
            journaled(store, name, "snapshot", tag=snap),
        ):
            _refuse_taken(listed(), snap, name)
            if active:
                machine.live_snapshot("save", snap)
            else:
                machine.disk_snapshot("save", snap)
            taken = _find(listed(), snap, name)
            size = _mib(taken.vm_state_size)
            what = f"with memory state ({size})" if taken.memory else "disk only"
            history.record(store.history, name, "snapshot", f"'{snap}', {what}")
    return taken


def revert(store: Store, name: str, snap: str) -> tuple[Snapshot, str]:
    """Go back to a snapshot; returns it and the VM's state afterwards. The recorded disk
    size follows the disk (a snapshot may be older than a resize)."""
    check_name(snap)
    store.require(name)
    with store.lock(name):
        state = reconcile.current(store, name, locked=True)
        machine = machines.machine(store, name, state)
        active = state.status in reconcile.ACTIVE
        target = _find(machine.live_snapshots() if active else machine.disk_snapshots(), snap, name)
        if active and not target.memory:
            raise StateConflict(
                f"snapshot '{snap}' of VM '{name}' holds only disk state; reverting a "
                f"running VM's disk is refused: stop it first (clan-vm-manager stop {name})"
            )
        with (
            history.failures_recorded(store.history, name, "revert"),
            journaled(store, name, "revert", tag=snap),
        ):
            status = state.status
            if active:
                machine.live_snapshot("load", snap)
                # Loading keeps the run state (running stays running, paused paused).
                status = "paused" if machine.run_state(timeout=5.0) == "paused" else "running"
                if status != state.status:
                    store.write_state(name, dataclasses.replace(state, status=status))
            else:
                machine.disk_snapshot("load", snap)
            size = sync_disk_size(store, name)
            how = "memory and disk" if active else "disk"
            details = f"'{snap}' ({how}, disk {size} MiB); VM {status}"
            history.record(store.history, name, "revert", details)
    return target, status


def delete(store: Store, name: str, snap: str) -> None:
    check_name(snap)
    store.require(name)
    with store.lock(name):
        state = reconcile.current(store, name, locked=True)
        machine = machines.machine(store, name, state)
        active = state.status in reconcile.ACTIVE
        _find(machine.live_snapshots() if active else machine.disk_snapshots(), snap, name)
        with (
            history.failures_recorded(store.history, name, "snapshot-delete"),
            journaled(store, name, "snapshot-delete", tag=snap),
        ):
            if active:
                machine.live_snapshot("delete", snap)
            else:
                machine.disk_snapshot("delete", snap)
            history.record(store.history, name, "snapshot-delete", f"'{snap}'")
