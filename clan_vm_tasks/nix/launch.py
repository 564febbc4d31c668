"""``start`` and ``restart`` of a VM that has a flake, declaratively: the definition is
evaluated and built before anything changes, a running VM is never rewritten, a start
that fails leaves the definition as it was, and the boot shows its console on a terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from clan_vm_tasks import render
from clan_vm_tasks.nix.prepare import (
    Applied,
    apply,
    apply_flake,
    flake_of,
    plan,
    refuse_running,
    restore,
)
from clan_vm_tasks.render import Notify
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store

T = TypeVar("T")


def _booting(store: Store, name: str, wait_for: str | None) -> str:
    return f"booting {name}" + (f", waiting for {wait_for!r}" if wait_for else "")


def start(
    store: Store,
    settings: Settings,
    name: str,
    option: str | None,
    launch: Callable[[], T],
    *,
    notify: Notify,
    wait_for: str | None = None,
    follow: bool = True,
    allow_qemu_args: bool = False,
    allow_shares: bool = False,
) -> T:
    """Bring NAME up to date with its flake (if it has one), then LAUNCH it. A running VM is
    refused first; a failed launch restores the definition the VM had."""
    refuse_running(store, name)
    applied = apply_flake(store, settings, option, name, notify, allow_qemu_args, allow_shares)
    return _launch(store, name, applied, launch, wait_for, follow)


def restart(
    store: Store,
    settings: Settings,
    name: str,
    option: str | None,
    relaunch: Callable[[Callable[[], None]], T],
    *,
    notify: Notify,
    wait_for: str | None = None,
    allow_qemu_args: bool = False,
    allow_shares: bool = False,
) -> T:
    """Evaluate and build NAME's flake definition while the VM still runs (a failure stops
    nothing), then RELAUNCH(before_start): stop, apply the definition, start."""
    flake = flake_of(store, option, name)
    planned = plan(store, settings, flake, name, allow_qemu_args, allow_shares) if flake else None
    applied: list[Applied] = []

    def before_start() -> None:
        if planned is not None:
            applied.append(apply(store, planned, notify))

    return _launch(store, name, None, lambda: relaunch(before_start), wait_for, True, applied)


def _launch(
    store: Store,
    name: str,
    applied: Applied | None,
    launch: Callable[[], T],
    wait_for: str | None,
    follow: bool,
    later: list[Applied] | None = None,
) -> T:
    progress = render.progress()
    try:
        if not follow:
            return launch()
        with progress.following(store.paths(name).console_log, _booting(store, name, wait_for)):
            return launch()
    except BaseException:
        restore(store, applied or (later[0] if later else None))
        raise
