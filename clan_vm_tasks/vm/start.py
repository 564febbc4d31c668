"""Starting a VM: launch it on its backend, record it running, wait for its ready text."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from clan_vm_tasks.backends.base import Launched, Machine
from clan_vm_tasks.errors import (
    ClanVMError,
    Interrupted,
    InterruptedWait,
    InvalidInput,
    StateConflict,
)
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import history
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store, VMState
from clan_vm_tasks.vm import definition, forwards, machines, reconcile
from clan_vm_tasks.vm.recovery import journaled
from clan_vm_tasks.vm.stop import stop


@dataclass(frozen=True)
class Started:
    name: str
    pid: int | None  # None for a VM on a libvirt host
    accel: str
    seconds: float  # until QMP answered, or until the awaited text and the agent were there


def _record_failed_start(store: Store, name: str, message: str) -> None:
    history.record(store.history, name, "start", message, "failed")


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into Interrupted, so the start can clean up after itself.

    Only the main thread may set handlers; a start in another thread (boot-test) keeps
    the process's handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _launch(
    store: Store,
    name: str,
    settings: Settings,
    accel: str | None,
    foreground: bool,
    notify: Notify,
    action: str,
) -> tuple[Machine, Launched, VMState]:
    """Launch a stopped VM and record it running; the caller holds the lock.

    A transaction: the VM is recorded ``starting`` before anything is launched, with the
    pid as soon as it is known; whatever interrupts or fails the start (an exception,
    Ctrl-C, SIGTERM, SIGHUP, a full disk) ends what was launched. A SIGKILL cannot be
    caught: then the next command finds the ``starting`` record and does it.
    """
    store.require(name)
    state = reconcile.current(store, name, locked=True)
    if state.status in reconcile.ACTIVE:
        how = f" (pid {state.pid})" if state.pid is not None else ""
        raise StateConflict(f"VM '{name}' is already running{how}")
    _apply_pending(store, name, notify)
    config = definition.load(store, name)
    definition.check_boot_files(config, name)
    forwards.refuse_held(store, name, config)
    backend = machines.backend(config.host)
    backend.check_config(config)  # what this host cannot run (any more) is refused untouched
    requested = accel or (config.accel if config.accel != "auto" else settings.accel)
    choice = backend.choose_accel(requested)
    machine = backend.machine(store.paths(name), state)
    starting = dataclasses.replace(
        state,
        status="starting",
        pid=None,
        pid_start=None,
        started_at=history.now(),
        stopped_at=None,
        stop_step=None,
    )

    def on_spawned(pid: int, pid_start: int) -> None:
        store.write_state(name, dataclasses.replace(starting, pid=pid, pid_start=pid_start))

    try:
        with _signals_interrupt(), journaled(store, name, action):
            store.write_state(name, starting)
            launched = machine.launch(
                config, choice, foreground=foreground, notify=notify, on_spawned=on_spawned
            )
            state = dataclasses.replace(
                starting,
                status="running",
                pid=launched.pid,
                pid_start=launched.pid_start,
                accel=launched.accel,
                console_offset=launched.console_offset,
                tap=launched.tap,
                forwards=launched.forwards,
            )
            store.write_state(name, state)
            how = f"pid {launched.pid}, " if launched.pid is not None else ""
            history.record(store.history, name, action, f"{how}{launched.accel}")
    except BaseException as error:
        _undo_launch(store, name, machine, starting)
        _record_failed_start(store, name, _why(error))
        raise
    return machine, launched, state


def _apply_pending(store: Store, name: str, notify: Notify) -> None:
    """A change made while the VM ran (``set``) takes effect now, before anything boots."""
    from clan_vm_tasks.vm import pending

    if pending.path(store, name).exists():
        from clan_vm_tasks.vm.create import apply_pending

        before = definition.load(store, name)
        if apply_pending(store, name, notify).changed:
            after = definition.load(store, name)
            notify(
                f"applied the change made while '{name}' ran: "
                + pending.words(pending.differences(before, after))
            )


def _why(error: BaseException) -> str:
    if isinstance(error, Interrupted):
        return f"interrupted by {signal.Signals(error.signum).name}"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return str(error) or type(error).__name__


def _undo_launch(store: Store, name: str, machine: Machine, starting: VMState) -> None:
    """End what the launch started and record the VM stopped, as far as the host lets us;
    what is left (a full disk) the next command finishes from the ``starting`` record."""
    stopped = dataclasses.replace(
        starting, status="stopped", pid=None, pid_start=None, tap=None, stopped_at=history.now()
    )
    with contextlib.suppress(Exception):
        machine.abandon()
        store.write_state(name, stopped)


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
    wait_for_agent: bool = False,
    wait_for_ssh: bool = False,
) -> Started:
    """Boot a VM and return once QMP answers (and WAIT_FOR appeared on the console, and with
    WAIT_FOR_AGENT the guest agent answered, and with WAIT_FOR_SSH its sshd took the VM's
    key with the pinned host key)."""
    if timeout <= 0:
        raise InvalidInput("--timeout must be positive")
    began = time.monotonic()
    store.require(name)  # before locking: an unknown name leaves no lock file
    with store.lock(name):
        machine, launched, state = _launch(store, name, settings, accel, foreground, notify, action)
    try:
        waiting = _Waiting(wait_for, timeout, wait_for_agent, wait_for_ssh)
        _wait(store, name, machine, state, began, waiting, notify)
    except KeyboardInterrupt:
        if foreground:  # Ctrl-C stops a VM in the foreground, as it does once it is up
            _stop_on_interrupt(store, name, notify)
            raise
        what = (
            f"{wait_for!r} on the console of"
            if wait_for
            else "the sshd of"
            if wait_for_ssh
            else "the guest agent of"
        )
        message = f"interrupted while waiting for {what} '{name}'"
        _record_failed_start(store, name, message)
        raise InterruptedWait(
            f"{message}; the VM is still running (clan-vm-manager stop {name})"
        ) from None
    seconds = time.monotonic() - began
    if foreground:
        _follow_foreground(store, name, machine, state.console_offset, notify)
    return Started(name, launched.pid, launched.accel, seconds)


@dataclass(frozen=True)
class _Waiting:
    text: str | None  # on the console
    timeout: float  # in all, from the start's beginning
    agent: bool  # the guest agent answers
    ssh: bool  # the guest's sshd takes the VM's key


def _wait(
    store: Store,
    name: str,
    machine: Machine,
    state: VMState,
    began: float,
    waiting: _Waiting,
    notify: Notify,
) -> None:
    """Until the text appeared on the console, and the agent (or sshd) answered."""
    wait_for, timeout = waiting.text, waiting.timeout
    wait_for_agent, wait_for_ssh = waiting.agent, waiting.ssh
    if wait_for is not None and not machine.wait_for_text(
        wait_for, state.console_offset, timeout - (time.monotonic() - began), machine.alive
    ):
        tail = machine.console_tail(state.console_offset)
        alive = machine.alive()
        why = f"not within {timeout:g}s" if alive else f"the VM ended: {machine.ended().details}"
        message = f"{wait_for!r} did not appear on the console of '{name}' ({why})"
        message += "".join(f"; {hint}" for hint in console_hints(machine, state.console_offset))
        if alive:
            message += f"; the VM is still running (clan-vm-manager stop {name})"
        else:
            reconcile.current(store, name)  # records how it ended (a crash, a power-off)
        notify("last console lines:\n" + ("\n".join(f"  | {line}" for line in tail) or "  (none)"))
        _record_failed_start(store, name, message)
        raise ClanVMError(message)
    if wait_for_agent or wait_for_ssh:
        from clan_vm_tasks.vm import guest, ssh  # lazy: most starts wait for neither

        remaining = max(1.0, timeout - (time.monotonic() - began))
        try:
            if wait_for_ssh:
                ssh.wait_ready(store, name, remaining)
            else:
                guest.wait_for_agent(store, name, remaining)
        except ClanVMError as error:
            message = f"{error}; the VM is still running (clan-vm-manager stop {name})"
            _record_failed_start(store, name, message)
            raise ClanVMError(message) from None


# What a failed boot printed, and what the user can do about it.
CONSOLE_HINTS = (
    (
        "IO-APIC + timer doesn't work",
        "under TCG emulation a busy host can fail the kernel's timer check: add no_timer_check"
        " to the kernel command line",
    ),
)


def console_hints(machine: Machine, offset: int) -> list[str]:
    """The hints for what a failed boot printed on its console (none if it cannot be read:
    the failure is told anyway)."""
    try:
        printed = machine.console_output(offset).decode(errors="replace")
    except (ClanVMError, OSError):
        return []
    return [hint for text, hint in CONSOLE_HINTS if text in printed]


def _stop_on_interrupt(store: Store, name: str, notify: Notify) -> None:
    def tolerant(message: str) -> None:
        with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
            notify(message)

    tolerant(f"stopping '{name}'...")
    stop(store, name, notify=tolerant)


def _follow_foreground(
    store: Store, name: str, machine: Machine, offset: int, notify: Notify
) -> None:
    """Stream the console until the VM ends; Ctrl-C or SIGTERM stop it gracefully."""
    machine.follow(offset, lambda: _stop_on_interrupt(store, name, notify))
    reconcile.current(store, name)
