"""``start`` and ``restart`` of a VM that has a flake, declaratively: the definition is
evaluated and built before anything changes, a running VM is never rewritten, a start
that fails leaves the definition as it was, and the boot shows its console on a terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from clan_vm_tasks import render
from clan_vm_tasks.errors import StateConflict
from clan_vm_tasks.nix import origin
from clan_vm_tasks.nix.request import Request

if TYPE_CHECKING:
    from clan_vm_tasks.nix.prepare import Applied

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
    _refuse_running(request)
    applied = None
    if _has_flake(request):
        from clan_vm_tasks.nix import prepare  # lazy: a VM made by hand loads no flake step

        applied = prepare.apply_flake(request)
    return _launch(request, applied, launch, wait_for, follow)


def _has_flake(request: Request) -> bool:
    """Whether a start looks for a flake: ``--flake``, a VM not created yet (its flake is
    found around the working directory), or one created from a flake."""
    store, name = request.store, request.name
    if request.flake or not store.exists(name):
        return True
    return origin.load(store, name).flake is not None


def _refuse_running(request: Request) -> None:
    """``start`` of a running VM fails before anything is evaluated or changed."""
    from clan_vm_tasks.vm import reconcile

    store, name = request.store, request.name
    if store.exists(name):
        state = reconcile.current(store, name)
        if state.status in reconcile.ACTIVE:
            how = f" (pid {state.pid})" if state.pid is not None else ""  # as vm/start says
            raise StateConflict(f"VM '{name}' is already running{how}")


def restart(
    request: Request,
    relaunch: Callable[[Callable[[], None]], T],
    *,
    wait_for: str | None = None,
) -> T:
    """Evaluate and build the VM's flake definition while the VM still runs (a failure stops
    nothing), then RELAUNCH(before_start): stop, apply the definition, start."""
    from clan_vm_tasks.nix import prepare

    found = prepare.source(request)
    planned = prepare.plan(request, found) if found else None
    applied: list[Applied] = []

    def before_start() -> None:
        if planned is not None:
            applied.append(prepare.apply(request, planned))

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
        done = applied or (later[0] if later else None)
        if done is not None:
            from clan_vm_tasks.nix import prepare

            prepare.restore(request, done)
        raise
