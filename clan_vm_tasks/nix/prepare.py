"""From a Nix definition to a VM ready to start: evaluate (cached), validate against the one
schema in ``models``, build and root what it needs, then create the VM or apply the change."""

from __future__ import annotations

from clan_vm_tasks.errors import InvalidInput, StateConflict
from clan_vm_tasks.models import VMConfig
from clan_vm_tasks.nix import flakes
from clan_vm_tasks.nix.command import STORE_DIR
from clan_vm_tasks.nix.declared import declared, require, to_config
from clan_vm_tasks.nix.flakes import Flake, where
from clan_vm_tasks.nix.realise import read_origin, realise
from clan_vm_tasks.render import Notify
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm.create import create, reconfigure


def prepare(
    store: Store,
    settings: Settings,
    flake: Flake,
    name: str,
    notify: Notify,
    allow_qemu_args: bool = False,
) -> VMConfig:
    """Evaluate, validate, build and create or update VM NAME from FLAKE."""
    evaluated = require(declared(store, flake), flake, name)
    config = to_config(name, evaluated)
    allowed = _check_trust(store, settings, flake, name, config, allow_qemu_args)
    realise(store, flake, name, evaluated, allowed)
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


def _check_trust(
    store: Store, settings: Settings, flake: Flake, name: str, config: VMConfig, allow: bool
) -> list[str]:
    """A flake is someone else's code: it may name only files in the Nix store, and pass
    extra arguments to QEMU (which can run host programs) only when the user allows it,
    on the command line, in the settings file, or before for these same arguments.
    Returns the extra arguments allowed (to be remembered)."""
    for field, attribute in (
        ("kernel", "kernel"),
        ("initrd", "initrd"),
        ("base_image", "baseImage"),
    ):
        value = getattr(config, field)
        if value is not None and not str(value).startswith(STORE_DIR + "/"):
            raise InvalidInput(
                f"{where(name)}.{attribute} is {value}, a file outside the Nix store; a flake "
                "may only name files in the store (a path in the flake like ./vmlinuz, or a "
                "derivation)"
            )
    args = list(config.qemu_args)
    if not args:
        return []
    remembered = read_origin(store, name).get("allowed_qemu_args")
    if allow or remembered == args or {name, "*"} & set(settings.allow_qemu_args):
        return args
    raise InvalidInput(
        f"{where(name)}.qemuArgs of {flake.ref} would run QEMU with {' '.join(args)!r}, which "
        "can run programs or open files on this host; allow it for this VM with "
        f"--allow-qemu-args, or with 'allow_qemu_args: [{name}]' in the settings file"
    )


def flake_of(store: Store, option: str | None, name: str) -> Flake | None:
    """The flake NAME's definition comes from: ``--flake``; else the flake it was created
    from; else, for a VM not created yet, $CLAN_VM_FLAKE or the flake around the working
    directory. A VM created on the command line has none: it is started as it is."""
    if option:
        return flakes.resolve(option)
    if not store.exists(name):
        return flakes.resolve(None)
    ref = read_origin(store, name).get("flake")
    if not isinstance(ref, str) or not ref:
        return None
    try:
        return flakes.resolve(ref)
    except InvalidInput as error:
        raise InvalidInput(
            f"VM '{name}' was created from the flake {ref}, which is gone ({error}); "
            f"start it with --flake REF"
        ) from None


def apply_flake(
    store: Store,
    settings: Settings,
    option: str | None,
    name: str,
    notify: Notify,
    allow_qemu_args: bool = False,
) -> None:
    """Before ``start NAME``: bring NAME up to date with its flake definition, if it has one."""
    flake = flake_of(store, option, name)
    if flake is not None:
        prepare(store, settings, flake, name, notify, allow_qemu_args)
