"""From a Nix definition to a VM ready to start: evaluate (cached), validate against the one
schema (``schema``), check what it may touch on this host (``trust``), build and root all
it refers to (``plan``); then create the VM or apply the change (``apply``). Nothing is
changed before everything that can fail without changing anything has succeeded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from clan_vm_tasks import render
from clan_vm_tasks.errors import (
    AlreadyExists,
    ClanVMError,
    InvalidInput,
    close_match,
)
from clan_vm_tasks.models import VMConfig
from clan_vm_tasks.nix import flakes, origin, trust
from clan_vm_tasks.nix.command import NixError
from clan_vm_tasks.nix.declared import (
    as_attributes,
    declared,
    names_without_network,
    require,
    to_config,
)
from clan_vm_tasks.nix.evaluate import Evaluated
from clan_vm_tasks.nix.flakes import Flake, where
from clan_vm_tasks.nix.origin import Origin
from clan_vm_tasks.nix.realise import realise, running
from clan_vm_tasks.nix.request import Request
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm.create import Reconfigured, create, reconfigure


@dataclass(frozen=True)
class Source:
    """Where a VM's definition comes from: its flake, and the VM's origin record."""

    flake: Flake
    origin: Origin


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


def source(request: Request) -> Source | None:
    """The flake the VM's definition comes from: ``--flake``; else the flake it was created
    from; else, for a VM not created yet, $CLAN_VM_FLAKE or the flake around the working
    directory. A VM created on the command line has none: it is started as it is."""
    store, name = request.store, request.name
    record = origin.load(store, name)
    if request.flake or not store.exists(name):
        found = flakes.resolve(request.flake or None, overrides=request.overrides)
        if found is not None and not request.overrides and found.ref == record.flake:
            found = found.with_overrides(record.overrides)  # as it was last evaluated
        return Source(found, record) if found is not None else None
    if record.flake is None:
        return None
    try:
        found = flakes.resolve(record.flake, overrides=request.overrides)
        if not request.overrides:  # the inputs it was last evaluated with
            found = found.with_overrides(record.overrides) if found else None
    except InvalidInput as error:
        raise InvalidInput(
            f"VM '{name}' was created from the flake {record.flake}, which is gone ({error}); "
            f"start it with --flake REF"
        ) from None
    return Source(found, record) if found is not None else None


def plan(request: Request, found: Source) -> Planned:
    """Evaluate, validate, check and build the VM of FOUND's flake; nothing of it changes."""
    store, name, flake = request.store, request.name, found.flake
    evaluated = require(declared(store, flake), flake, name)
    config = to_config(name, evaluated)
    try:
        allowed = _check(request, flake, config, found.origin)  # before building it
    except trust.StoreFileRefused as error:
        _refused(request, error)
    record = allowed.remembered(found.origin)
    try:
        record = realise(store, flake, name, evaluated, record)
    except NixError as error:
        from clan_vm_tasks.nix import diagnose  # lazy: only a failure needs its words

        raise NixError(diagnose.explain(str(error), flake)) from None
    # Again, now that the store paths exist: one may be a link to a directory of this host.
    try:
        again = _check(request, flake, config, record)
    except trust.StoreFileRefused as error:
        _refused(request, error)
    if again.remembered(record) != record:  # consented to as well: remembered with the rest
        record = again.remembered(record)
        origin.save(store, name, record)
    if config.host is not None:
        _send_to_host(request, config, evaluated, record)
    return Planned(flake, trust.pinned(config, again))


def _refused(request: Request, error: trust.StoreFileRefused) -> NoReturn:
    """A definition that names a file of the host: refused, and the attempt recorded."""
    from clan_vm_tasks.state import history

    action = "start" if request.store.exists(request.name) else "create"
    history.record(request.store.history, request.name, action, str(error), "failed")
    raise error


def _check(request: Request, flake: Flake, config: VMConfig, record: Origin) -> trust.Allowed:
    """What the user allowed CONFIG (refused when it needs consent not given), and whether
    its libvirt host can run it."""
    allowed = trust.check(request, flake, config, record)
    if config.host is not None:
        from clan_vm_tasks.vm import machines

        try:
            machines.backend(config.host, request.settings).check_config(config)
        except InvalidInput as error:
            raise InvalidInput(f"{where(config.name)}: {error}") from None
    return allowed


def _send_to_host(request: Request, config: VMConfig, evaluated: Evaluated, record: Origin) -> None:
    """The store paths the guest reaches on its host (not the kernel and initrd, which go
    as volumes) copied to a remote host and rooted there."""
    from clan_vm_tasks.nix import remote
    from clan_vm_tasks.vm import machines

    assert config.host is not None
    store = request.store
    paths = sorted(
        {
            path
            for field, objects in evaluated.installables.items()
            if field not in ("kernel", "initrd")
            for obj in objects
            for path in record.roots.get(obj, [])
        }
    )
    uri = machines.resolve(config.host, request.settings)
    previous = record.host_roots
    sent = remote.send(store, config.name, uri, paths, previous, running(store, config.name))
    if sent is not None and sent != previous:
        origin.save(store, config.name, record.replace(host_roots=sent))


def apply(request: Request, planned: Planned) -> Applied:
    """Create the VM, or apply the changed definition (pending while the VM runs)."""
    store, notify = request.store, request.notify
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
        previous = _current(request)
        change = reconfigure(store, name, config, notify)
    except AlreadyExists:
        return apply(request, planned)  # created meanwhile by another command
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


def _current(request: Request) -> VMConfig | None:
    from clan_vm_tasks.vm import definition

    try:
        return definition.load(request.store, request.name)
    except ClanVMError:  # a broken definition is replaced, not restored
        return None


def prepare(request: Request, flake: Flake) -> VMConfig:
    """Evaluate, validate, build and create or update the VM from FLAKE."""
    found = Source(flake, origin.load(request.store, request.name))
    return apply(request, plan(request, found)).config


def restore(request: Request, applied: Applied | None) -> None:
    """After a start that failed, for a VM that does not run: the definition it had before
    APPLIED changed it (a disk that grew stays grown)."""
    from clan_vm_tasks.vm import reconcile

    store = request.store
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


def apply_flake(request: Request) -> Applied | None:
    """Before ``start NAME``: bring NAME up to date with its flake definition, if it has one."""
    found = source(request)
    if found is None:
        return None
    if not request.store.exists(request.name):
        _check_declared(request.store, found.flake, request.name)
    return apply(request, plan(request, found))


def _check_declared(store: Store, flake: Flake, name: str) -> None:
    """A VM that does not exist must be one the flake declares; a mistyped name is said at
    once, before any error of the flake's evaluation, and without the network when the
    flake's names can be told without it."""
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
        raise InvalidInput(
            f"no VM named '{name}' here, and the flake {flake.label} declares no VM '{name}' "
            f"(declared: {', '.join(names) or 'none'})"
            + (f"; did you mean '{close}'?" if close else "")
        )
