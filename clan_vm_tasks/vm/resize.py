"""Growing the disk of a stopped VM (shrinking would destroy guest data and is refused)."""

from __future__ import annotations

import json

from clan_vm_tasks.errors import InvalidInput, StateConflict
from clan_vm_tasks.state import history
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import machines, reconcile
from clan_vm_tasks.vm.recovery import journaled


def resize(store: Store, name: str, size_mib: int) -> tuple[int, int]:
    """Grow a stopped VM's disk to SIZE_MIB; returns (old, new) size in MiB."""
    paths = store.require(name)
    with store.lock(name):
        state = reconcile.current(store, name, locked=True)
        if state.status in reconcile.ACTIVE:
            raise StateConflict(
                f"VM '{name}' is {state.status}; stop it to resize its disk "
                f"(clan-vm-manager stop {name})"
            )
        machine = machines.machine(store, name, state)
        old = machine.disk_size_mib()
        if size_mib < old:
            raise InvalidInput(
                f"refusing to shrink the disk of VM '{name}' from {old} MiB to {size_mib} MiB "
                "(data would be lost); only growing is supported"
            )
        if size_mib == old:
            return old, old
        # The image grows first; a command killed before the definition follows leaves a
        # marker, and the next command records the image's size.
        with (
            history.failures_recorded(store.history, name, "resize"),
            journaled(store, name, "resize", **{"from": old}),
        ):
            machine.grow_disk(size_mib)
            config = store.read_config(name)
            config["disk_size"] = size_mib
            store.write(paths.config, json.dumps(config, indent=2).encode())
            history.record(store.history, name, "resize", f"disk {old} MiB -> {size_mib} MiB")
    return old, size_mib
