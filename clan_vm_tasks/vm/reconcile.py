"""What a VM really is doing, as opposed to what we last wrote down.

Cheap enough for ``list`` over hundreds of VMs: a stopped VM on this machine costs one
``stat`` (no pydantic, no control channel). Where a VM recorded stopped may run anyway
is its backend's to say (on a libvirt host it may have been started there: it is always
asked, and ``list`` asks each host once). Three records can be untrue:

- running or paused, but the VM is gone: it crashed or ended by itself (the
  backend tells which and why);
- starting, and nobody holds the VM's lock: the command that started it died
  before it recorded the VM running; whatever it launched is ended;
- stopped or crashed, but the VM runs (the record was lost or torn): it is taken
  back into the record as running.

A change is written (with its one history event) only under the VM's lock.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clan_vm_tasks.state.store import Store, VMState

if TYPE_CHECKING:
    from clan_vm_tasks.backends.base import Backend

ACTIVE = ("running", "paused")


def _now() -> str:
    from clan_vm_tasks.state import history

    return history.now()


@dataclass(frozen=True)
class Change:
    state: VMState  # the record as it should be
    action: str  # the history event
    details: str
    result: str = "ok"
    abandon: bool = False  # end what an interrupted start launched


def needs_check(state: VMState, backend: Backend, vm_dir: str) -> bool:
    """Whether the record may be untrue (a stopped VM on this machine costs one stat)."""
    return (
        state.status in ACTIVE or state.status == "starting" or backend.may_run_unrecorded(vm_dir)
    )


def _ended(state: VMState, status: str, step: str | None) -> VMState:
    return dataclasses.replace(
        state,
        status=status,
        pid=None,
        pid_start=None,
        stopped_at=_now(),
        stop_step=step,
        tap=None,
    )


def observe(store: Store, name: str, state: VMState, locked: bool) -> Change | None:
    """How the record must change to tell the truth; None when it does."""
    from clan_vm_tasks.vm import machines  # lazy: a list of stopped VMs needs no backend

    if state.status == "starting":
        if not locked:
            return None  # its command may still be at work (it holds the lock)
        return Change(
            _ended(state, "stopped", None),
            "start",
            "interrupted before the VM was recorded running; what it launched was stopped",
            result="failed",
            abandon=True,
        )
    machine = machines.machine(store, name, state)
    if state.status in ACTIVE:
        if machine.alive():
            return None
        ending = machine.ended()
        status = "crashed" if ending.action == "crash" else "stopped"
        return Change(_ended(state, status, ending.step), ending.action, ending.details)
    found = machine.find_running()
    if found is None:
        return None
    running = dataclasses.replace(
        state,
        status="running",
        pid=found.pid,
        pid_start=found.pid_start,
        accel=found.accel,
        started_at=state.started_at or _now(),
        stopped_at=None,
        stop_step=None,
        console_offset=found.console_offset,
        tap=found.tap,
        forwards=found.forwards,
    )
    how = f"pid {found.pid}" if found.pid is not None else "on its host"
    details = f"found running ({how}) although recorded {state.status}"
    return Change(running, "recover", details)


def apply(store: Store, name: str, before: VMState, change: Change) -> VMState:
    """Make CHANGE true and record it; the caller holds the VM lock."""
    from clan_vm_tasks.vm import machines

    machine = machines.machine(store, name, before)
    if change.abandon:
        machine.abandon()
    store.write_state(name, change.state)
    if change.state.status not in ACTIVE:
        machine.release(before)
    # Imported here: a command that finds all as recorded writes no history.
    from clan_vm_tasks.state import history

    history.record(store.history, name, change.action, change.details, change.result)
    return change.state


def current(store: Store, name: str, locked: bool = False) -> VMState:
    """The reconciled state; written back (once, with its event) when the lock can be had."""
    from clan_vm_tasks.vm import machines

    state = store.read_state(name)
    if not needs_check(state, machines.backend_of(store, name), f"{store.vms}/{name}"):
        return state
    change = observe(store, name, state, locked)
    if locked:
        return state if change is None else apply(store, name, state, change)
    if change is None and state.status != "starting":
        return state
    fd = store.try_lock(name)
    if fd is None:  # someone else is working on it and will record it
        return state if change is None else change.state
    try:
        fresh = store.read_state(name)  # re-read: it may have changed before we locked
        again = observe(store, name, fresh, locked=True)
        return fresh if again is None else apply(store, name, fresh, again)
    finally:
        os.close(fd)
