"""From a Nix definition to a VM ready to start: evaluate (cached), validate against the one
schema in ``models``, build and root what it needs, then create the VM or apply the change."""

from __future__ import annotations

from clan_vm_tasks.errors import StateConflict
from clan_vm_tasks.models import VMConfig
from clan_vm_tasks.nix import flakes
from clan_vm_tasks.nix.declared import declared, require, to_config
from clan_vm_tasks.nix.flakes import Flake
from clan_vm_tasks.nix.realise import realise, uses_flake
from clan_vm_tasks.render import Notify
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm.create import create, reconfigure


def prepare(
    store: Store, settings: Settings, flake: Flake, name: str, notify: Notify
) -> VMConfig | None:
    """Evaluate, validate, build and create or update VM NAME from FLAKE.

    Returns None (and does nothing) when a discovered flake does not declare an
    existing VM: that VM is then started as it is.
    """
    vms = declared(store, flake)
    if name not in vms and not flake.explicit and store.exists(name):
        return None
    evaluated = require(vms, flake, name)
    config = to_config(name, evaluated)
    realise(store, flake, name, evaluated)
    try:
        if not store.exists(name):
            config = create(store, config)
            notify(f"created VM '{name}' from {flake.ref}")
            return config
    except StateConflict:
        pass  # created concurrently by another command: update it instead
    changed = reconfigure(store, name, config)
    if changed:
        notify(f"applied the changed definition of '{name}': {', '.join(changed)}")
    return config


def apply_flake(
    store: Store, settings: Settings, option: str | None, name: str, notify: Notify
) -> None:
    """Before ``start NAME``: bring NAME up to date with its flake definition, if it has one."""
    # Cheap checks first: no flake anywhere means no nix run.
    if not flakes.around(option):
        return
    flake = flakes.resolve(option)
    if flake is None or not uses_flake(store, flake, name):
        return
    prepare(store, settings, flake, name, notify)
