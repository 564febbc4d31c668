"""Creating a VM, and applying a changed definition to one that exists."""

from __future__ import annotations

import os
import shutil

from clan_vm_tasks.errors import StateConflict
from clan_vm_tasks.models import VMConfig
from clan_vm_tasks.state import files, history
from clan_vm_tasks.state.store import Store, VMState
from clan_vm_tasks.vm import definition, machines, reconcile
from clan_vm_tasks.vm.recovery import journaled

MAC_LOCK_TIMEOUT = 120.0


def create(store: Store, config: VMConfig) -> VMConfig:
    """Register a new VM with a fresh disk; an existing name is refused untouched."""
    config = definition.check(config, store)
    explicit_mac = config.network.mac is not None
    config = definition.with_mac(config)
    name = config.name
    paths = store.paths(name)
    # The MAC check and the rename that registers the VM happen under one store-wide lock.
    with store.lock(name), _mac_registry(store):
        if store.exists(name):
            raise StateConflict(f"VM '{name}' already exists")
        definition.check_mac(config, definition.macs(store), explicit_mac)
        # Built in a hidden directory and renamed into place: a crash leaves no half VM
        # (and the next command removes the hidden one).
        staging = files.private_dir(store.staging_dir(name, "creating"))
        try:
            with (
                history.failures_recorded(store.history, name, "create"),
                journaled(store, name, "create"),
            ):
                machines.backend().create_disk(
                    staging / paths.disk.name, config.disk_size, config.base_image
                )
                files.atomic_write(
                    staging / paths.config.name, config.model_dump_json(indent=2).encode()
                )
                state = VMState(created_at=history.now())
                files.atomic_write(staging / paths.state.name, state.to_json())
                os.rename(staging, paths.dir)
                files.fsync_dir(store.vms)
                history.record(
                    store.history,
                    name,
                    "create",
                    f"{config.cpus} cpus, {config.memory} MiB, {config.disk_size} MiB disk",
                )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return config


def _mac_registry(store: Store) -> files.Locked:
    return files.locked(store.root / "network.lock", "MAC registry", MAC_LOCK_TIMEOUT)


def reconfigure(store: Store, name: str, config: VMConfig) -> list[str]:
    """Apply a changed definition to an existing VM; returns the names of changed fields.

    The new settings take effect at the next start. Growing the disk needs the VM
    stopped; shrinking is always refused.
    """
    config = definition.check(config, store)
    explicit_mac = config.network.mac is not None
    config = definition.with_mac(config)
    with store.lock(name), _mac_registry(store):
        paths = store.require(name)
        old = definition.load(store, name)
        changed = [f for f in VMConfig.model_fields if getattr(old, f) != getattr(config, f)]
        if not changed:
            return []
        if "base_image" in changed:
            raise StateConflict(
                f"the base image of VM '{name}' changed; an existing disk cannot be moved to "
                f"another base: delete the VM (clan-vm-manager delete {name}) and start it again"
            )
        if "network" in changed:
            definition.check_mac(config, definition.macs(store), explicit_mac)
        with (
            history.failures_recorded(store.history, name, "reconfigure"),
            journaled(store, name, "resize", **{"from": old.disk_size}),
        ):
            if "disk_size" in changed:
                state = reconcile.current(store, name, locked=True)
                if state.status in reconcile.ACTIVE:
                    raise StateConflict(f"VM '{name}' is running; stop it to resize its disk")
                machines.machine(store, name, state).grow_disk(config.disk_size)
            store.write(paths.config, config.model_dump_json(indent=2).encode())
            history.record(store.history, name, "reconfigure", "changed " + ", ".join(changed))
    return changed
