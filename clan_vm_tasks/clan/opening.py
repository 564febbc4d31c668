"""The state directory as every command opens it (the command line, the dashboard, the
Python API): what killed commands left is finished first, a VM still in a clan's
inventory after a killed ``delete`` included."""

from __future__ import annotations

from pathlib import Path

from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm.recovery import recover


def open_store(root: Path, *, create: bool, notify: Notify = notice) -> Store:
    """The state directory at ROOT; without CREATE (a read-only command) nothing is created:
    with no state directory there is nothing to read or finish."""
    store = Store(root)
    if create:
        store.ensure()
    if store.root.is_dir():
        recover(store, notify)
        if store.unlisting_work():  # a killed delete: its VM still in a clan's inventory
            from clan_vm_tasks.clan import sync  # lazy: usually nothing is pending

            sync.finish(store, notify)
    return store
