"""What a VM really is doing, as opposed to what we last wrote down.

Cheap enough for ``list`` over hundreds of VMs: no pydantic, no QMP, just
/proc. A VM recorded as running whose QEMU is gone crashed if QEMU left its
pidfile behind (it removes the file on every orderly exit) and stopped
otherwise (the guest powered itself off).
"""

from __future__ import annotations

import dataclasses
import os

from clan_vm_tasks import history
from clan_vm_tasks.qemu.process import ProcessId, is_ours
from clan_vm_tasks.store import Store, VMPaths, VMState

ACTIVE = ("running", "paused")


def process_of(state: VMState) -> ProcessId | None:
    if state.pid is None or state.pid_start is None:
        return None
    return ProcessId(state.pid, state.pid_start)


def settle(paths: VMPaths, state: VMState) -> tuple[VMState, str | None]:
    """The reconciled state, plus the history action to record if it changed."""
    if state.status not in ACTIVE:
        return state, None
    proc = process_of(state)
    if proc is not None and is_ours(proc, paths.pidfile):
        return state, None
    crashed = paths.pidfile.exists()
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
    return settled, "crash" if crashed else "poweroff"


def _details(action: str, state: VMState) -> str:
    if action == "crash":
        return f"QEMU (pid {state.pid}) vanished without a stop"
    return "the guest powered itself off"


def persist_settled(store: Store, name: str, before: VMState, action: str) -> None:
    """Write a settled state and its one history event; the caller holds the VM lock."""
    paths = store.paths(name)
    settled, _ = settle(paths, before)
    store.write_state(name, settled)
    if action == "crash":
        paths.pidfile.unlink(missing_ok=True)
    if before.tap:
        from clan_vm_tasks import hostnet  # lazy: only a VM that had a tap needs it

        hostnet.delete_tap(before.tap)
    history.record(store.history, name, action, _details(action, before), "ok")


def current(store: Store, name: str, locked: bool = False) -> VMState:
    """Reconciled state; written back (once, with its event) when the lock can be had."""
    state = store.read_state(name)
    settled, action = settle(store.paths(name), state)
    if action is None:
        return state
    if locked:
        persist_settled(store, name, state, action)
        return settled
    fd = store.try_lock(name)
    if fd is None:
        return settled  # someone else is working on it and will record it
    try:
        fresh = store.read_state(name)  # re-read: it may have changed before we locked
        again, action = settle(store.paths(name), fresh)
        if action is not None:
            persist_settled(store, name, fresh, action)
        return again
    finally:
        os.close(fd)
