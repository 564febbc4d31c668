"""Creating a VM, and applying a changed definition to one that exists."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, fields

from clan_vm_tasks.errors import AlreadyExists, ClanVMError, StateConflict
from clan_vm_tasks.models import VMConfig, dump
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import files, history
from clan_vm_tasks.state.store import Store, VMPaths, VMState
from clan_vm_tasks.vm import definition, machines, pending, reconcile
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
    with store.lock(name), mac_registry(store):
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
                files.atomic_write(staging / paths.config.name, pending.dump(config))
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
    pending: bool = False  # the VM runs: the change waits for its next start (``vm.pending``)


def mac_registry(store: Store) -> files.Locked:
    return files.locked(store.root / "network.lock", "MAC registry", MAC_LOCK_TIMEOUT)


def reconfigure(
    store: Store,
    name: str,
    config: VMConfig,
    notify: Notify = notice,
    reason: str = "changed",
    action: str = "reconfigure",
) -> Reconfigured:
    """Apply a changed definition to an existing, stopped VM: it takes effect at the next
    start. A running VM is not touched (its definition is what it runs): the change is
    pending (kept as ``next.json``, shown by ``show`` and ``status``) and applied by its
    next start. Disks grow; a smaller size keeps the larger disk, with a warning that says
    how to shrink it. ACTION "set" (the ``set`` task) records every change with its values,
    a pending one too; "reconfigure" (a flake's definition) names the fields that changed.
    """
    config = definition.check(config, store)
    explicit_mac = config.network.mac is not None
    config = definition.with_mac(config)
    with store.lock(name), mac_registry(store):
        return reconfigure_locked(store, name, config, explicit_mac, notify, action, reason)


def apply_pending(store: Store, name: str, notify: Notify = notice) -> Reconfigured:
    """At a start, under the VM's lock, the VM stopped: apply the change that waited for it."""
    waiting = pending.load(store, name)
    if waiting is None:
        pending.clear(store, name)  # none, or unusable: nothing is applied
        return Reconfigured([])
    try:
        config = definition.check(waiting, store)
    except ClanVMError as error:
        raise ClanVMError(
            f"the change of VM '{name}' that waits for its start cannot be applied: {error} "
            f"(clan-vm-manager show {name} says what it changes; clan-vm-manager set {name} "
            "changes it)"
        ) from None
    with mac_registry(store):
        return reconfigure_locked(
            store, name, config, True, notify, "set", "applied at start (set while it ran):"
        )


def reconfigure_locked(
    store: Store,
    name: str,
    config: VMConfig,
    explicit_mac: bool,
    notify: Notify,
    action: str,
    reason: str = "",
    details: str | None = None,
) -> Reconfigured:
    """``reconfigure`` of a checked CONFIG; the caller holds the VM's lock and the MAC
    registry. DETAILS: the history's words for it (default: REASON and what changed)."""
    store.require(name)
    old = definition.load(store, name)
    config = definition.never_shrink(old, config, notify)
    changed = [f.name for f in fields(VMConfig) if getattr(old, f.name) != getattr(config, f.name)]
    if not changed:
        pending.clear(store, name)  # what runs is what is wanted: nothing waits any more
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
    if details is None and action == "set":
        details = f"{reason} {pending.words(pending.differences(old, config))}".strip()
    elif details is None:
        details = f"{reason} " + ", ".join(changed)
    target = dump(config)
    state = reconcile.current(store, name, locked=True)
    if state.status in reconcile.ACTIVE:
        if action != "set":
            pending.save(store, name, config)  # a flake's change: told, not an event
        elif pending.load(store, name) != config:
            details += " (pending: applies at the next start)"
            with journaled(store, name, action, config=target, details=details, pending=True):
                pending.save(store, name, config)
                history.record(store.history, name, action, details)
        return Reconfigured(changed, pending=True)
    if "root_filesystem" in changed and config.root_filesystem is not None:
        notify(
            f"notice: rootFilesystem of VM '{name}' applies to a new disk only; its disk "
            f"stays as it is (delete the VM and start it again for a new one)"
        )
    with (
        history.failures_recorded(store.history, name, action),
        journaled(store, name, action, config=target, details=details),
    ):
        pending.commit(store, name, state, old, config, notify)
        history.record(store.history, name, action, details)
    return Reconfigured(changed)
