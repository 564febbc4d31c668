"""Pause and resume: freeze a running VM's CPUs and let them run again (as libvirt's TCK, a VM
in the wrong state is refused)."""

from __future__ import annotations

from clan_vm_tasks.errors import ClanVMError, StateConflict
from clan_vm_tasks.state import history
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import machines, reconcile


def _set_paused(store: Store, name: str, pause: bool) -> None:
    store.require(name)
    with store.lock(name):
        state = reconcile.current(store, name, locked=True)
        verb = "pause" if pause else "resume"
        if state.status not in reconcile.ACTIVE:
            raise StateConflict(f"VM '{name}' is not running (it is {state.status}); cannot {verb}")
        machine = machines.machine(store, name, state)
        # The hypervisor's own view decides, in case ours is stale (e.g. paused by another client).
        run_state = machine.run_state(timeout=5.0)
        if run_state is None:
            raise ClanVMError(f"VM '{name}' does not answer its control channel; cannot {verb}")
        if (run_state == "paused") == pause:
            raise StateConflict(
                f"VM '{name}' is already paused" if pause else f"VM '{name}' is not paused"
            )
        machine.set_paused(pause)
        state.status = "paused" if pause else "running"
        store.write_state(name, state)
    history.record(store.history, name, verb, "over QMP")


def pause(store: Store, name: str) -> None:
    """Freeze a running VM's CPUs; memory and devices stay as they are."""
    _set_paused(store, name, pause=True)


def resume(store: Store, name: str) -> None:
    _set_paused(store, name, pause=False)
