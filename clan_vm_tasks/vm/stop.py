"""Stopping a VM: its backend's stop ladder, gentlest step first, and what ended it."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from clan_vm_tasks.backends.base import Machine
from clan_vm_tasks.errors import ClanVMError, InvalidInput, StateConflict
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import history
from clan_vm_tasks.state.store import Store, VMState
from clan_vm_tasks.vm import machines, reconcile
from clan_vm_tasks.vm.recovery import journaled

DEFAULT_STOP_TIMEOUT = 30.0
HARD_STEP_WAIT = 5.0  # for each step that does not wait on the guest


@dataclass(frozen=True)
class Stopped:
    name: str
    step: str  # e.g. "acpi", "qmp-quit", "sigterm" or "sigkill"
    words: str  # what that step means
    seconds: float


def _ladder(machine: Machine, *, paused: bool, force: bool, timeout: float, notify: Notify) -> str:
    """Run the stop ladder until one step ends the VM; returns that step's name."""
    steps = list(machine.stop_steps)
    for i, step in enumerate(steps):
        following = steps[i + 1].doing if i + 1 < len(steps) else "giving up"
        if step.kind != "force" and force:
            continue
        if step.kind == "guest" and paused:
            notify(f"the VM is paused and cannot see the power button; {following}")
            continue
        try:
            machine.stop_step(step)
        except ClanVMError as error:
            if step.kind == "guest":
                notify(f"power button not delivered ({error}); {following}")
            continue
        wait = timeout if step.kind == "guest" else HARD_STEP_WAIT
        if machine.wait_gone(wait):
            return step.name
        if step.kind == "guest":
            notify(f"the guest did not power off within {timeout:g}s; {following}")
    raise ClanVMError(f"the VM survived every stop step ({steps[-1].name} included)")


def halt(
    store: Store, name: str, state: VMState, *, force: bool, timeout: float, notify: Notify
) -> Stopped:
    """Stop a running VM and record it stopped; the caller holds the lock."""
    machine = machines.machine(store, name, state)
    began = time.monotonic()
    step = _ladder(
        machine, paused=state.status == "paused", force=force, timeout=timeout, notify=notify
    )
    machine.release(state)  # the pidfile is gone after SIGKILL too: not a crash
    store.write_state(
        name,
        dataclasses.replace(
            state,
            status="stopped",
            pid=None,
            pid_start=None,
            tap=None,
            stopped_at=history.now(),
            stop_step=step,
        ),
    )
    words = next(s.words for s in machine.stop_steps if s.name == step)
    return Stopped(name, step, words, time.monotonic() - began)


def require_active(store: Store, name: str) -> VMState:
    store.require(name)
    state = reconcile.current(store, name, locked=True)
    if state.status not in reconcile.ACTIVE:
        raise StateConflict(f"VM '{name}' is not running (it is {state.status})")
    return state


def stop(
    store: Store,
    name: str,
    *,
    force: bool = False,
    timeout: float = DEFAULT_STOP_TIMEOUT,
    notify: Notify = notice,
) -> Stopped:
    if timeout <= 0:
        raise InvalidInput("--timeout must be positive")
    began = time.monotonic()
    store.require(name)
    with store.lock(name):
        state = require_active(store, name)
        with (
            history.failures_recorded(store.history, name, "stop"),
            journaled(store, name, "stop"),
        ):
            stopped = halt(store, name, state, force=force, timeout=timeout, notify=notify)
            stopped = dataclasses.replace(stopped, seconds=time.monotonic() - began)
            history.record(
                store.history,
                name,
                "stop",
                f"{stopped.step}: {stopped.words} ({stopped.seconds:.1f}s)",
            )
    return stopped
