"""The read-only requests, as the command line answers them: ``list --json`` (with
``--flake`` when serve has a flake), ``show --json``, ``history --json``, ``snapshots
--json``. Blocking calls: the API runs them in worker threads."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from clan_vm_tasks.errors import InvalidInput, UnknownVM
from clan_vm_tasks.names import check_name
from clan_vm_tasks.state import history
from clan_vm_tasks.state.store import STATES, Store
from clan_vm_tasks.vm.listing import list_vms
from clan_vm_tasks.vm.snapshots import list_snapshots
from clan_vm_tasks.vm.status import show
from clan_vm_tasks.web.context import Context


def vm_list(
    ctx: Context, state_filter: str | None = None, host: str | None = None
) -> list[dict[str, Any]]:
    if state_filter is not None and state_filter not in STATES:
        raise InvalidInput(f"unknown state {state_filter!r}: use one of {', '.join(STATES)}")
    return rows(ctx, ctx.store(), state_filter, host)


def rows(
    ctx: Context, store: Store, state_filter: str | None = None, host: str | None = None
) -> list[dict[str, Any]]:
    vms = list_vms(store, state_filter, host, ctx.settings)
    if ctx.flake is not None:
        from clan_vm_tasks.nix import declared

        vms = declared.list_rows(store, ctx.flake, vms, state_filter)
    return vms


def vm_show(ctx: Context, name: str) -> dict[str, Any]:
    check_name(name)
    store = ctx.store()
    if ctx.flake is not None:
        from clan_vm_tasks.nix import declared

        if not store.exists(name):
            found = declared.declared(store, ctx.flake)
            if name not in found:
                raise UnknownVM(name)
            return dict(declared.require(found, ctx.flake, name).definition)
        info = show(store, ctx.settings, name)
        definition = declared.definition_for_show(store, ctx.flake.ref, name, ctx.flake.overrides)
        if definition is not None:
            info["declared"] = definition
        return info
    return show(store, ctx.settings, name)


def vm_history(ctx: Context, name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """``history --vm NAME --json``; a VM that neither exists nor ever did is unknown."""
    check_name(name)
    store = ctx.store()
    events = history.read(store.history, name, limit)
    if not events and not store.exists(name):
        raise UnknownVM(name)
    return [asdict(e) for e in events]


def vm_snapshots(ctx: Context, name: str) -> list[dict[str, Any]]:
    check_name(name)
    return [s.as_dict() for s in list_snapshots(ctx.store(), name)]
