"""Snapshots: of the disk when the VM is stopped, of the whole VM when it runs.

A stopped VM's disk is snapshotted by the backend's image tool. A running (or
paused) VM is snapshotted live, with its memory and device state, so reverting
a running VM brings back the running guest as it was.
"""

from __future__ import annotations

import re

from clan_vm_tasks.backends.base import Snapshot
from clan_vm_tasks.errors import InvalidInput, StateConflict
from clan_vm_tasks.state import history
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import machines, reconcile

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
        if state.status in reconcile.ACTIVE:
            _refuse_taken(machine.live_snapshots(), snap, name)
            machine.live_snapshot("save", snap)
            taken = _find(machine.live_snapshots(), snap, name)
        elif live:
            raise StateConflict(
                f"VM '{name}' is not running (it is {state.status}); a live snapshot needs "
                "a running VM (without --live a stopped VM's disk is snapshotted)"
            )
        else:
            _refuse_taken(machine.disk_snapshots(), snap, name)
            machine.disk_snapshot("save", snap)
            taken = _find(machine.disk_snapshots(), snap, name)
    what = f"with memory state ({_mib(taken.vm_state_size)})" if taken.memory else "disk only"
    history.record(store.history, name, "snapshot", f"'{snap}', {what}")
    return taken


def revert(store: Store, name: str, snap: str) -> tuple[Snapshot, str]:
    """Go back to a snapshot; returns it and the VM's state afterwards."""
    check_name(snap)
    store.require(name)
    with store.lock(name):
        state = reconcile.current(store, name, locked=True)
        machine = machines.machine(store, name, state)
        active = state.status in reconcile.ACTIVE
        if active:
            target = _find(machine.live_snapshots(), snap, name)
            if not target.memory:
                raise StateConflict(
                    f"snapshot '{snap}' of VM '{name}' holds only disk state; reverting a "
                    f"running VM's disk is refused: stop it first (clan-vm-manager stop {name})"
                )
            machine.live_snapshot("load", snap)
            # Loading keeps the run state (running stays running, paused paused).
            status = "paused" if machine.run_state(timeout=5.0) == "paused" else "running"
            if status != state.status:
                state.status = status
                store.write_state(name, state)
        else:
            target = _find(machine.disk_snapshots(), snap, name)
            machine.disk_snapshot("load", snap)
            status = state.status
    how = "memory and disk" if active else "disk"
    history.record(store.history, name, "revert", f"'{snap}' ({how}); VM {status}")
    return target, status


def delete(store: Store, name: str, snap: str) -> None:
    check_name(snap)
    store.require(name)
    with store.lock(name):
        state = reconcile.current(store, name, locked=True)
        machine = machines.machine(store, name, state)
        if state.status in reconcile.ACTIVE:
            _find(machine.live_snapshots(), snap, name)
            machine.live_snapshot("delete", snap)
        else:
            _find(machine.disk_snapshots(), snap, name)
            machine.disk_snapshot("delete", snap)
    history.record(store.history, name, "snapshot-delete", f"'{snap}'")
