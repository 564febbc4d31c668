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
    plan,
    refuse_running,
    restore,
    source,
)
from clan_vm_tasks.nix.request import Request

T = TypeVar("T")


def _booting(name: str, wait_for: str | None) -> str:
    return f"booting {name}" + (f", waiting for {wait_for!r}" if wait_for else "")


def start(
    request: Request,
    launch: Callable[[], T],
    *,
    wait_for: str | None = None,
    follow: bool = True,
) -> T:
    """Bring the VM up to date with its flake (if it has one), then LAUNCH it. A running VM
    is refused first; a failed launch restores the definition the VM had."""
    refuse_running(request)
    applied = apply_flake(request)
    return _launch(request, applied, launch, wait_for, follow)


def restart(
    request: Request,
    relaunch: Callable[[Callable[[], None]], T],
    *,
    wait_for: str | None = None,
) -> T:
    """Evaluate and build the VM's flake definition while the VM still runs (a failure stops
    nothing), then RELAUNCH(before_start): stop, apply the definition, start."""
    found = source(request)
    planned = plan(request, found) if found else None
    applied: list[Applied] = []

    def before_start() -> None:
        if planned is not None:
            applied.append(apply(request, planned))

    return _launch(request, None, lambda: relaunch(before_start), wait_for, True, applied)


def _launch(
    request: Request,
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
        log = request.store.paths(request.name).console_log
        with progress.following(log, _booting(request.name, wait_for)):
            return launch()
    except BaseException:
        restore(request, applied or (later[0] if later else None))
        raise
