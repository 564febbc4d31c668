"""Restarting a VM: a graceful stop (if it runs), then a start, as one history event."""

from __future__ import annotations

from collections.abc import Callable

from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import reconcile
from clan_vm_tasks.vm.start import Started, start
from clan_vm_tasks.vm.stop import DEFAULT_STOP_TIMEOUT, halt


def restart(
    store: Store,
    settings: Settings,
    name: str,
    *,
    timeout: float = DEFAULT_STOP_TIMEOUT,
    wait_for: str | None = None,
    notify: Notify = notice,
    before_start: Callable[[], None] | None = None,
) -> Started:
    """Stop (gracefully) if running, then start: one "restart" event in the history.
    BEFORE_START runs between the two (to apply a changed definition)."""
    store.require(name)
    with store.lock(name):
        store.require(name)
        state = reconcile.current(store, name, locked=True)
        if state.status in reconcile.ACTIVE:
            halt(store, name, state, force=False, timeout=timeout, notify=notify)
    if before_start is not None:
        before_start()
    return start(
        store,
        settings,
        name,
        wait_for=wait_for,
        notify=notify,
        action="restart",
        timeout=max(timeout, 60.0),
    )
