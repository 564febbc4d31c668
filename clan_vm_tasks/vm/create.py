"""Creating a VM, and applying a changed definition to one that exists."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from clan_vm_tasks.errors import AlreadyExists, StateConflict
from clan_vm_tasks.models import VMConfig
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import files, history
from clan_vm_tasks.state.store import Store, VMPaths, VMState
from clan_vm_tasks.vm import definition, machines, reconcile
from clan_vm_tasks.vm.recovery import journaled

MAC_LOCK_TIMEOUT = 120.0


def create(store: Store, config: VMConfig) -> VMConfig:
    """Register a new VM with a fresh disk, made by its backend; an existing name is refused
    untouched (``AlreadyExists``)."""
    config = definition.check(config, store)
    explicit_mac = config.network.mac is not None
    config = definition.with_mac(config)
    name = config.name
    paths = store.paths(name)
    # The MAC check and the rename that registers the VM happen under one store-wide lock.
    with store.lock(name), _mac_registry(store):
        if store.exists(name):
            raise AlreadyExists(name)
        definition.check_mac(config, definition.macs(store), explicit_mac)
        # Built in a hidden directory and renamed into place: a crash leaves no half VM
        # (and the next command removes the hidden one).
        staging = files.private_dir(store.staging_dir(name, "creating"))
        try:
            with (
                history.failures_recorded(store.history, name, "create"),
                journaled(store, name, "create"),
            ):
                # The definition first: it names the backend whose leftovers the next
                # command takes away if this one is killed (see ``recovery``).
                definition_json = config.model_dump_json(indent=2).encode()
                files.atomic_write(staging / paths.config.name, definition_json)
                machines.backend(config.host).provision(config, VMPaths(staging), store)
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


@dataclass(frozen=True)
class Reconfigured:
    changed: list[str]  # the fields of the definition that differ
    pending: bool = False  # the VM runs: nothing was written, the change applies at its next start


def _mac_registry(store: Store) -> files.Locked:
    return files.locked(store.root / "network.lock", "MAC registry", MAC_LOCK_TIMEOUT)


def reconfigure(
    store: Store, name: str, config: VMConfig, notify: Notify = notice, reason: str = "changed"
) -> Reconfigured:
    """Apply a changed definition to an existing, stopped VM: it takes effect at the next
    start. A running VM is not touched (its definition is what it runs): the change is
    pending, and applied when a start finds it again. Disks grow; a smaller size keeps the
    larger disk, with a warning that says how to shrink it.
    """
    config = definition.check(config, store)
    explicit_mac = config.network.mac is not None
    config = definition.with_mac(config)
    with store.lock(name), _mac_registry(store):
        paths = store.require(name)
        old = definition.load(store, name)
        config = definition.never_shrink(old, config, notify)
        changed = [f for f in VMConfig.model_fields if getattr(old, f) != getattr(config, f)]
        if not changed:
            return Reconfigured([])
        if "host" in changed:
            raise StateConflict(
                f"the host of VM '{name}' changed; a VM cannot move between hosts: delete it "
                f"(clan-vm-manager delete {name}) and create it again"
            )
        if "base_image" in changed:
            raise StateConflict(
                f"the base image of VM '{name}' changed; an existing disk cannot be moved to "
                f"another base: delete the VM (clan-vm-manager delete {name}) and start it again"
            )
        if "network" in changed:
            definition.check_mac(config, definition.macs(store), explicit_mac)
        state = reconcile.current(store, name, locked=True)
        if state.status in reconcile.ACTIVE:
            return Reconfigured(changed, pending=True)
        if "root_filesystem" in changed and config.root_filesystem is not None:
            notify(
                f"notice: rootFilesystem of VM '{name}' applies to a new disk only; its disk "
                f"stays as it is (delete the VM and start it again for a new one)"
            )
        with (
            history.failures_recorded(store.history, name, "reconfigure"),
            journaled(store, name, "resize", **{"from": old.disk_size}),
        ):
            machines.machine(store, name, state).update_disks(old, config, notify)
            store.write(paths.config, config.model_dump_json(indent=2).encode())
            history.record(store.history, name, "reconfigure", f"{reason} " + ", ".join(changed))
    return Reconfigured(changed)
