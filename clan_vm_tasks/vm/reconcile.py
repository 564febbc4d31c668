"""What a VM really is doing, as opposed to what we last wrote down.

Cheap enough for ``list`` over hundreds of VMs: no pydantic and no control
channel, only the backend's ``alive`` check. A VM recorded as running whose
process is gone crashed or was powered off by its guest; the backend tells which.
"""

from __future__ import annotations

import dataclasses
import os

from clan_vm_tasks.state import history
from clan_vm_tasks.state.store import Store, VMState

ACTIVE = ("running", "paused")


def settle(store: Store, name: str, state: VMState) -> tuple[VMState, str | None]:
    """The reconciled state, plus the history action to record if it changed."""
    if state.status not in ACTIVE:
        return state, None
    from clan_vm_tasks.vm import machines  # lazy: a list of stopped VMs needs no backend

    machine = machines.machine(store, name, state)
    if machine.alive():
        return state, None
    action = machine.ended()
    crashed = action == "crash"
    settled = dataclasses.replace(
        state,
        status="crashed" if crashed else "stopped",
        pid=None,
        pid_start=None,
        stopped_at=history.now(),
        stop_step=None if crashed else "guest-poweroff",
        tap=None,
        forwards=[],
    )
    return settled, action


def _details(action: str, state: VMState) -> str:
    if action == "crash":
        return f"QEMU (pid {state.pid}) vanished without a stop"
    return "the guest powered itself off"


def persist_settled(store: Store, name: str, before: VMState) -> VMState:
    """Write a settled state and its one history event; the caller holds the VM lock."""
    settled, action = settle(store, name, before)
    if action is None:
        return settled
    store.write_state(name, settled)
    from clan_vm_tasks.vm import machines

    machines.machine(store, name, before).release(before)
    history.record(store.history, name, action, _details(action, before), "ok")
    return settled


def current(store: Store, name: str, locked: bool = False) -> VMState:
    """Reconciled state; written back (once, with its event) when the lock can be had."""
    state = store.read_state(name)
    settled, action = settle(store, name, state)
    if action is None:
        return state
    if locked:
        return persist_settled(store, name, state)
    fd = store.try_lock(name)
    if fd is None:
        return settled  # someone else is working on it and will record it
    try:
        # Re-read: it may have changed before we locked.
        return persist_settled(store, name, store.read_state(name))
    finally:
        os.close(fd)
