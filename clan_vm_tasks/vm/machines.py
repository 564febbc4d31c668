"""Which backend runs a VM, and the ``Machine`` that stands for it.

Every VM runs on the local QEMU backend today; this is the one place that
chooses, so a second backend changes this module and not the operations.
"""

from __future__ import annotations

from clan_vm_tasks.backends.base import Backend, Machine
from clan_vm_tasks.backends.qemu.machine import QemuBackend
from clan_vm_tasks.state.store import Store, VMState

_LOCAL = QemuBackend()


def backend() -> Backend:
    return _LOCAL


def machine(store: Store, name: str, state: VMState) -> Machine:
    return backend().machine(store.paths(name), state)
