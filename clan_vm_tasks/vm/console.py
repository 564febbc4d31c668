"""A VM's serial console: what it printed so far, and attaching to it."""

from __future__ import annotations

import os

from clan_vm_tasks.errors import StateConflict
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import machines
from clan_vm_tasks.vm.stop import require_active


def console_log(store: Store, name: str) -> bytes:
    store.require(name)
    return machines.machine(store, name, store.read_state(name)).console_output(0)


def attach_console(store: Store, name: str) -> str:
    store.require(name)
    with store.lock(name, timeout=5):
        state = require_active(store, name)
    # QEMU serves one console client at a time and would leave a second one hanging.
    held = files.try_lock(store.root / "locks" / f"{name}.console")
    if held is None:
        raise StateConflict(f"the console of VM '{name}' is already attached elsewhere")
    try:
        return machines.machine(store, name, state).attach_console()
    finally:
        os.close(held)
