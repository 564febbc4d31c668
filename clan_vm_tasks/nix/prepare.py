"""From a Nix definition to a VM ready to start: evaluate (cached), validate against the one
schema in ``models``, check what it may touch on this host, build and root all it refers to
(``plan``); then create the VM or apply the change (``apply``). Nothing is changed before
everything that can fail without changing anything has succeeded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from clan_vm_tasks import render
from clan_vm_tasks.errors import ClanVMError, InvalidInput, StateConflict, close_match
from clan_vm_tasks.models import VMConfig
from clan_vm_tasks.nix import diagnose, flakes
from clan_vm_tasks.nix.command import STORE_DIR, NixError
from clan_vm_tasks.nix.declared import (
    as_attributes,
    declared,
    names_without_network,
    require,
    to_config,
)
from clan_vm_tasks.nix.evaluate import Evaluated
from clan_vm_tasks.nix.flakes import Flake, where
from clan_vm_tasks.nix.realise import read_origin, realise, remember, running
from clan_vm_tasks.render import Notify
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm.create import Reconfigured, create, reconfigure


@dataclass(frozen=True)
class Planned:
    flake: Flake
    config: VMConfig


@dataclass(frozen=True)
class Applied:
    config: VMConfig
    created: bool
    change: Reconfigured  # for an existing VM
    previous: VMConfig | None  # its definition before (to go back to if its start fails)


def plan(
    store: Store,
    settings: Settings,
    flake: Flake,
    name: str,
    allow_qemu_args: bool = False,
    allow_shares: bool = False,
) -> Planned:
    """Evaluate, validate, check and build VM NAME of FLAKE; nothing of the VM changes."""
    evaluated = require(declared(store, flake), flake, name)
    config = to_config(name, evaluated)
    consent = (store, settings, flake, name, config, allow_qemu_args, allow_shares)
    allowed = _check(*consent)  # before building what may not be used anyway
    try:
        origin = realise(store, flake, name, evaluated, allowed)
    except NixError as error:
        raise NixError(diagnose.explain(str(error), flake)) from None
    # Again, now that the store paths exist: one may be a link to a directory of this host.
    again = _check(*consent)
    if again != allowed:  # consented to as well: remembered with the rest
        origin = realise(store, flake, name, evaluated, again)
    if config.host is not None:
        _send_to_host(store, settings, config, evaluated, origin)
    return Planned(flake, config)


def _check(
    store: Store,
    settings: Settings,
    flake: Flake,
    name: str,
    config: VMConfig,
    allow_qemu_args: bool,
    allow_shares: bool,
) -> dict[str, Any]:
    """What the user allowed CONFIG (refused when it needs consent not given), and whether
    its libvirt host can run it."""
    allowed = _check_trust(store, settings, flake, name, config, allow_qemu_args, allow_shares)
    if config.host is not None:
        from clan_vm_tasks.vm import machines

        try:
            machines.hosted(config.host, settings).check_config(config)
        except InvalidInput as error:
            raise InvalidInput(f"{where(name)}: {error}") from None
    return allowed


def _send_to_host(
    store: Store, settings: Settings, config: VMConfig, evaluated: Evaluated, origin: dict[str, Any]
) -> None:
    """The store paths the guest reaches on its host (not the kernel and initrd, which go
    as volumes) copied to a remote host and rooted there."""
    from clan_vm_tasks.nix import remote
    from clan_vm_tasks.vm import machines

    assert config.host is not None
    built: dict[str, list[str]] = origin.get("roots") or {}
    paths = sorted(
        {
            path
            for field, objects in evaluated.installables.items()
            if field not in ("kernel", "initrd")
            for obj in objects
            for path in built.get(obj, [])
        }
    )
    uri = machines.resolve(config.host, settings)
    previous = origin.get("host_roots") if isinstance(origin.get("host_roots"), dict) else None
    sent = remote.send(store, config.name, uri, paths, previous or {}, running(store, config.name))
    if sent is not None or previous:
        remember(store, config.name, host_roots=sent or previous)


def apply(store: Store, planned: Planned, notify: Notify) -> Applied:
    """Create the VM, or apply the changed definition (pending while the VM runs)."""
    config, flake, name = planned.config, planned.flake, planned.config.name
    try:
        if not store.exists(name):
            progress = render.progress()
            progress.phase(f"creating {name}")
            try:
                config = create(store, config)
            finally:
                progress.done()
            notify(f"created VM '{name}' from {flake.label}")
            return Applied(config, True, Reconfigured([]), None)
        previous = _current(store, name)
        change = reconfigure(store, name, config, notify)
    except StateConflict as error:
        if store.exists(name) and "already exists" in str(error):
            return apply(store, planned, notify)  # created meanwhile by another command
        raise
    except InvalidInput as error:
        raise InvalidInput(f"{where(name)}: {as_attributes(str(error))}") from None
    if change.pending:
        notify(
            f"the definition of '{name}' changed ({', '.join(change.changed)}): it applies at "
            f"the next start (the VM is running; clan-vm-manager restart {name})"
        )
    elif change.changed:
        notify(f"applied the changed definition of '{name}': {', '.join(change.changed)}")
    return Applied(config, False, change, previous)


def _current(store: Store, name: str) -> VMConfig | None:
    from clan_vm_tasks.vm import definition

    try:
        return definition.load(store, name)
    except ClanVMError:  # a broken definition is replaced, not restored
        return None


def prepare(
    store: Store,
    settings: Settings,
    flake: Flake,
    name: str,
    notify: Notify,
    allow_qemu_args: bool = False,
    allow_shares: bool = False,
) -> VMConfig:
    """Evaluate, validate, build and create or update VM NAME from FLAKE."""
    planned = plan(store, settings, flake, name, allow_qemu_args, allow_shares)
    return apply(store, planned, notify).config


def refuse_running(store: Store, name: str) -> None:
    """``start`` of a running VM fails before anything is evaluated or changed."""
    from clan_vm_tasks.vm import reconcile

    if store.exists(name):
        state = reconcile.current(store, name)
        if state.status in reconcile.ACTIVE:
            how = f" (pid {state.pid})" if state.pid is not None else ""  # as vm/start says
            raise StateConflict(f"VM '{name}' is already running{how}")


def restore(store: Store, applied: Applied | None) -> None:
    """After a start that failed, for a VM that does not run: the definition it had before
    APPLIED changed it (a disk that grew stays grown)."""
    from clan_vm_tasks.vm import reconcile

    if applied is None or applied.previous is None or not applied.change.changed:
        return
    if applied.change.pending or not store.exists(applied.config.name):
        return
    if reconcile.current(store, applied.config.name).status in reconcile.ACTIVE:
        return  # it runs (a ready text that did not come): with the new definition
    reconfigure(
        store,
        applied.config.name,
        applied.previous,
        notify=lambda message: None,
        reason="reverted after a failed start:",
    )


def _check_trust(
    store: Store,
    settings: Settings,
    flake: Flake,
    name: str,
    config: VMConfig,
    allow_qemu_args: bool,
    allow_shares: bool,
) -> dict[str, Any]:
    """A flake is someone else's code: it may name only files in the Nix store, and pass
    extra arguments to QEMU (which can run host programs) or share host directories with
    the guest only when the user allows it, on the command line, in the settings file, or
    before for these same arguments and directories. Returns what was allowed (to be
    remembered)."""
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
    origin = read_origin(store, name)
    allowed: dict[str, Any] = {}
    args = list(config.qemu_args)
    if args:
        if not (
            allow_qemu_args
            or origin.get("allowed_qemu_args") == args
            or {name, "*"} & set(settings.allow_qemu_args)
        ):
            raise InvalidInput(
                f"{where(name)}.qemuArgs of {flake.label} would run QEMU with {' '.join(args)!r}, "
                "which can run programs or open files on this host; allow it for this VM with "
                f"--allow-qemu-args, or with 'allow_qemu_args: [{name}]' in the settings file"
            )
        allowed["allowed_qemu_args"] = args
    shares = host_shares(config)
    if shares:
        if not (
            allow_shares
            or origin.get("allowed_shares") == shares
            or {name, "*"} & set(settings.allow_shares)
        ):
            seen = ", ".join(f"{source} ({how})" for source, how in sorted(shares.values()))
            raise InvalidInput(
                f"{where(name)}.shares of {flake.label} would let the VM see {seen} of this "
                "host; allow it for this VM with --allow-shares, or with "
                f"'allow_shares: [{name}]' in the settings file"
            )
        allowed["allowed_shares"] = shares
    return allowed


def host_shares(config: VMConfig) -> dict[str, list[str]]:
    """The shares that expose a directory of the host: all but the VM's own directories and
    read-only ones from the Nix store (world-readable anyway)."""
    found = {}
    for tag, share in sorted(config.shares.items()):
        if share.source is None:
            continue
        source = str(share.source)
        # Where it leads, not how it is spelled: a store path may be a link out of the store.
        resolved, store = os.path.realpath(source), os.path.realpath(STORE_DIR)
        in_store = resolved == store or resolved.startswith(store + "/")
        if in_store and share.read_only:
            continue
        found[tag] = [source, "read-only" if share.read_only else "writable"]
    return found


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


def _check_declared(store: Store, flake: Flake, name: str) -> None:
    """A VM that does not exist must be one the flake declares; a mistyped name is said at
    once, before any error of the flake's evaluation, and without the network when the flake's
    names can be told without it."""
    names = names_without_network(store, flake)
    if names is None:
        try:
            names = sorted(declared(store, flake))
        except NixError as error:
            raise NixError(
                f"no VM named '{name}' here, and the flake {flake.label} does not evaluate to "
                f"say whether it declares one: {error}"
            ) from None
    if name not in names:
        close = close_match(name, sorted({*names, *store.names()}))
        hint = f"did you mean '{close}'?" if close else f"it declares {', '.join(names) or 'none'}"
        raise InvalidInput(f"no VM named '{name}' here or in the flake {flake.label}; {hint}")


def apply_flake(
    store: Store,
    settings: Settings,
    option: str | None,
    name: str,
    notify: Notify,
    allow_qemu_args: bool = False,
    allow_shares: bool = False,
) -> Applied | None:
    """Before ``start NAME``: bring NAME up to date with its flake definition, if it has one."""
    flake = flake_of(store, option, name)
    if flake is None:
        return None
    if not store.exists(name):
        _check_declared(store, flake, name)
    planned = plan(store, settings, flake, name, allow_qemu_args, allow_shares)
    return apply(store, planned, notify)
