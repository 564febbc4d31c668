"""A VM's serial console: what it printed so far, and attaching to it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from clan_vm_tasks.backends.base import ConsoleStream
from clan_vm_tasks.errors import StateConflict
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import Store, VMState
from clan_vm_tasks.vm import machines
from clan_vm_tasks.vm.stop import require_active


def console_log(store: Store, name: str) -> bytes:
    store.require(name)
    return machines.machine(store, name, store.read_state(name)).console_output(0)


def _claim(store: Store, name: str) -> tuple[VMState, int]:
    """The running VM's state and its console's lock: one client at a time."""
    store.require(name)
    with store.lock(name, timeout=5):
        state = require_active(store, name)
    # QEMU serves one console client at a time and would leave a second one hanging.
    held = files.try_lock(store.root / "locks" / f"{name}.console")
    if held is None:
        raise StateConflict(f"the console of VM '{name}' is already attached elsewhere")
    return state, held


def attach_console(store: Store, name: str) -> str:
    state, held = _claim(store, name)
    try:
        return machines.machine(store, name, state).attach_console()
    finally:
        os.close(held)


@contextlib.contextmanager
def open_console(
    store: Store, name: str, on_data: Callable[[bytes], None]
) -> Iterator[ConsoleStream]:
    """The console for a program rather than this terminal (the web dashboard), under the
    same one-client rule: ON_DATA gets what the guest prints (b"" when it closed)."""
    state, held = _claim(store, name)
    try:
        stream = machines.machine(store, name, state).open_console(on_data)
        try:
            yield stream
        finally:
            stream.close()
    finally:
        os.close(held)
