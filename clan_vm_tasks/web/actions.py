"""The operations a page can ask for, each as its command-line task does it: the same
calls in ``vm/``, ``nix/`` and ``clan/``, the same rules, the same one-line message.
Each runs in a worker thread and reports progress through NOTIFY."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clan_vm_tasks import render
from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.names import check_name
from clan_vm_tasks.render import Notify
from clan_vm_tasks.vm import machines
from clan_vm_tasks.web.context import Context

Body = dict[str, Any]
Action = Callable[[Context, str, Body, Notify], dict[str, Any]]


# --- request bodies: checked as the command line checks its options -------------------------


def flag(body: Body, key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{key!r} must be true or false, not {value!r}")
    return value


def seconds(body: Body, key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{key!r} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{key!r} must be positive, not {value}")
    return float(value)


def text(body: Body, key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{key!r} must be a string, not {value!r}")
    return value


def _on_host(store_host: str | None) -> str:
    return f" on {machines.where(store_host)}" if store_host else ""


def _running(host: str | None, pid: int | None, accel: str) -> str:
    return f"{_on_host(host)} ({accel})" if pid is None else f" (pid {pid}, {accel})"


# --- the console's latest line while a VM boots ----------------------------------------------


def booting(log: Path, name: str, notify: Notify) -> contextlib.AbstractContextManager[None]:
    """While the block boots NAME: what its console log (a new one per boot) last said."""
    return render.latest_line(
        log, lambda line: notify(f"booting {name}: {' '.join(line.split())[:200]}"), 0.3
    )


# --- the actions -------------------------------------------------------------------------------


def start(ctx: Context, name: str, body: Body, notify: Notify) -> dict[str, Any]:
    from clan_vm_tasks.clan import sync
    from clan_vm_tasks.nix import launch
    from clan_vm_tasks.nix.request import Request
    from clan_vm_tasks.vm.start import start as start_vm

    check_name(name)
    wait_for = text(body, "wait_for")
    timeout = seconds(body, "timeout", 60)
    store = ctx.store(create=True)
    # A VM the flake declares but that does not exist yet is created from serve's flake;
    # one that exists is started as the CLI starts it (from the flake it came from).
    option = ctx.flake.ref if ctx.flake is not None and not store.exists(name) else None
    notify(f"starting {name}")

    def boot() -> Any:
        log = store.paths(name).console_log
        watch = booting(log, name, notify) if store.host_of(name) is None else None
        with watch or contextlib.nullcontext():
            return start_vm(
                store, ctx.settings, name, wait_for=wait_for, timeout=timeout, notify=notify
            )

    inputs = ctx.flake.overrides if option is not None and ctx.flake is not None else ()
    request = Request(store, ctx.settings, name, option, notify=notify, overrides=inputs)
    started = launch.start(request, boot, follow=False)
    sync.push(store, name, ctx.clan_dir, notify)
    how = f"{wait_for!r} appeared" if wait_for else "QMP answered"
    running = _running(store.host_of(name), started.pid, started.accel)
    message = f"started VM '{name}'{running}: {how} after {started.seconds:.1f}s"
    return {"message": message, "pid": started.pid, "accel": started.accel}


def stop(ctx: Context, name: str, body: Body, notify: Notify) -> dict[str, Any]:
    from clan_vm_tasks.vm.stop import DEFAULT_STOP_TIMEOUT
    from clan_vm_tasks.vm.stop import stop as stop_vm

    check_name(name)
    force = flag(body, "force")
    timeout = seconds(body, "timeout", DEFAULT_STOP_TIMEOUT)
    store = ctx.store()
    notify(f"stopping {name}" + (" (force)" if force else ": pressing the power button"))
    stopped = stop_vm(store, name, force=force, timeout=timeout, notify=notify)
    message = (
        f"stopped VM '{name}'{_on_host(store.host_of(name))} after {stopped.seconds:.1f}s: "
        f"{stopped.words} ({stopped.step})"
    )
    return {"message": message, "step": stopped.step}


def restart(ctx: Context, name: str, body: Body, notify: Notify) -> dict[str, Any]:
    from clan_vm_tasks.nix import launch
    from clan_vm_tasks.nix.request import Request
    from clan_vm_tasks.vm.restart import restart as restart_vm
    from clan_vm_tasks.vm.stop import DEFAULT_STOP_TIMEOUT

    check_name(name)
    timeout = seconds(body, "timeout", DEFAULT_STOP_TIMEOUT)
    wait_for = text(body, "wait_for")
    store = ctx.store()
    store.require(name)
    notify(f"restarting {name}")
    started = launch.restart(
        Request(store, ctx.settings, name, notify=notify),
        lambda before_start: restart_vm(
            store,
            ctx.settings,
            name,
            timeout=timeout,
            wait_for=wait_for,
            notify=notify,
            before_start=before_start,
        ),
        wait_for=wait_for,
    )
    running = _running(store.host_of(name), started.pid, started.accel)
    return {"message": f"restarted VM '{name}'{running}", "pid": started.pid}


def pause(ctx: Context, name: str, body: Body, notify: Notify) -> dict[str, Any]:
    from clan_vm_tasks.vm.pause import pause as pause_vm

    check_name(name)
    store = ctx.store()
    pause_vm(store, name)
    return {"message": f"paused VM '{name}'{_on_host(store.host_of(name))}"}


def resume(ctx: Context, name: str, body: Body, notify: Notify) -> dict[str, Any]:
    from clan_vm_tasks.vm.pause import resume as resume_vm

    check_name(name)
    store = ctx.store()
    resume_vm(store, name)
    return {"message": f"resumed VM '{name}'{_on_host(store.host_of(name))}"}


def delete(ctx: Context, name: str, body: Body, notify: Notify) -> dict[str, Any]:
    from clan_vm_tasks.clan import sync
    from clan_vm_tasks.nix import origin
    from clan_vm_tasks.nix.realise import forget
    from clan_vm_tasks.vm.delete import delete as delete_vm

    check_name(name)
    force = flag(body, "force")
    store = ctx.store()
    host = store.host_of(name)
    record = origin.load(store, name)
    with sync.leaving_clans(store, name, ctx.clan_dir, notify):
        kept = delete_vm(store, name, force=force, notify=notify)
        unrooted = forget(store, name, record)
        if kept and host is not None:  # its volume there
            message = f"deleted VM '{name}'{_on_host(host)}; its disk is kept as {kept}"
        else:
            kept_at = f"; its disk image is kept at {kept}" if kept else ""
            message = f"deleted VM '{name}'{_on_host(host)}{kept_at}"
        if unrooted:
            notify(unrooted)
    return {"message": message, "kept_disk": None if kept is None else str(kept)}


def snapshot(ctx: Context, name: str, body: Body, notify: Notify) -> dict[str, Any]:
    from clan_vm_tasks.vm import snapshots

    check_name(name)
    snap = text(body, "name")
    if snap is None:
        raise InvalidInput('a snapshot needs a name: {"name": "..."}')
    live = flag(body, "live")
    store = ctx.store()
    taken = snapshots.take(store, name, snap, live=live)
    what = "with memory state" if taken.memory else "of the disk"
    message = f"took snapshot '{snap}' of VM '{name}'{_on_host(store.host_of(name))} {what}"
    return {"message": message, "snapshot": taken.as_dict()}


def revert(ctx: Context, name: str, body: Body, notify: Notify) -> dict[str, Any]:
    from clan_vm_tasks.vm import snapshots

    check_name(name)
    snap = str(body["snapshot"])
    store = ctx.store()
    target, status = snapshots.revert(store, name, snap)
    if status in ("running", "paused"):
        where = _on_host(store.host_of(name))
        message = (
            f"reverted VM '{name}'{where} to snapshot '{snap}' (memory and disk); it is {status}"
        )
    else:
        note = " (its memory state is only restored into a running VM)" if target.memory else ""
        message = f"reverted the disk of VM '{name}' to snapshot '{snap}'{note}"
    return {"message": message, "state": status}


def delete_snapshot(ctx: Context, name: str, body: Body, notify: Notify) -> dict[str, Any]:
    from clan_vm_tasks.vm import snapshots

    check_name(name)
    snap = str(body["snapshot"])
    snapshots.delete(ctx.store(), name, snap)
    return {"message": f"deleted snapshot '{snap}' of VM '{name}'"}


ACTIONS: dict[str, Action] = {
    "start": start,
    "stop": stop,
    "restart": restart,
    "pause": pause,
    "resume": resume,
}
