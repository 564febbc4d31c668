"""Starting a VM: launch it on its backend, record it running, wait for its ready text."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from clan_vm_tasks.backends.base import Launched, Machine
from clan_vm_tasks.errors import ClanVMError, InvalidInput, StateConflict
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import history
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store, VMState
from clan_vm_tasks.vm import definition, machines, reconcile
from clan_vm_tasks.vm.stop import stop


@dataclass(frozen=True)
class Started:
    name: str
    pid: int
    accel: str
    seconds: float  # until QMP answered, or until the awaited text appeared


def _record_failed_start(store: Store, name: str, message: str) -> None:
    history.record(store.history, name, "start", message, "failed")


def _launch(
    store: Store, name: str, settings: Settings, accel: str | None, foreground: bool, notify: Notify
) -> tuple[Machine, Launched, VMState]:
    """Launch a stopped VM and record it running; the caller holds the lock.

    On failure nothing is left running and the VM stays stopped.
    """
    store.require(name)
    state = reconcile.current(store, name, locked=True)
    if state.status in reconcile.ACTIVE:
        raise StateConflict(f"VM '{name}' is already running (pid {state.pid})")
    config = definition.load(store, name)
    definition.check_boot_files(config, name)
    backend = machines.backend()
    requested = accel or (config.accel if config.accel != "auto" else settings.accel)
    choice = backend.choose_accel(requested)
    machine = backend.machine(store.paths(name), state)
    try:
        launched = machine.launch(config, choice, foreground=foreground, notify=notify)
    except ClanVMError as error:
        _record_failed_start(store, name, str(error))
        raise
    state = dataclasses.replace(
        state,
        status="running",
        pid=launched.pid,
        pid_start=launched.pid_start,
        accel=launched.accel,
        started_at=history.now(),
        stopped_at=None,
        stop_step=None,
        console_offset=launched.console_offset,
        tap=launched.tap,
        forwards=launched.forwards,
    )
    store.write_state(name, state)
    return machine, launched, state


def start(
    store: Store,
    settings: Settings,
    name: str,
    *,
    wait_for: str | None = None,
    timeout: float = 60.0,
    accel: str | None = None,
    foreground: bool = False,
    notify: Notify = notice,
    action: str = "start",
) -> Started:
    """Boot a VM and return once QMP answers (and WAIT_FOR appeared on the console)."""
    if timeout <= 0:
        raise InvalidInput("--timeout must be positive")
    began = time.monotonic()
    store.require(name)  # before locking: an unknown name leaves no lock file
    with store.lock(name):
        machine, launched, state = _launch(store, name, settings, accel, foreground, notify)
    if wait_for is not None and not machine.wait_for_text(
        wait_for, state.console_offset, timeout - (time.monotonic() - began), machine.alive
    ):
        tail = machine.console_tail(state.console_offset)
        alive = machine.alive()
        why = "QEMU exited" if not alive else f"not within {timeout:g}s"
        message = f"{wait_for!r} did not appear on the console of '{name}' ({why})"
        if alive:
            message += f"; the VM is still running (clan-vm-manager stop {name})"
        notify("last console lines:\n" + ("\n".join(f"  | {line}" for line in tail) or "  (none)"))
        _record_failed_start(store, name, message)
        raise ClanVMError(message)
    seconds = time.monotonic() - began
    details = f"pid {launched.pid}, {launched.accel}" + (
        f", {wait_for!r} after {seconds:.1f}s" if wait_for else ""
    )
    history.record(store.history, name, action, details)
    if foreground:
        _follow_foreground(store, name, machine, state.console_offset, notify)
    return Started(name, launched.pid, launched.accel, seconds)


def _follow_foreground(
    store: Store, name: str, machine: Machine, offset: int, notify: Notify
) -> None:
    """Stream the console until the VM ends; Ctrl-C or SIGTERM stop it gracefully."""

    def on_interrupt() -> None:
        notify(f"stopping '{name}'...")
        stop(store, name)

    machine.follow(offset, on_interrupt)
    reconcile.current(store, name)
