"""A VM's status, checked with its hypervisor, and everything about it (``show``)."""

from __future__ import annotations

from typing import Any

from clan_vm_tasks.errors import ClanVMError, HostUnreachable, StateConflict
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import guest, listing, machines, pending, reconcile


def _unreachable(store: Store, name: str, error: HostUnreachable) -> dict[str, Any]:
    """A VM whose libvirt host does not answer: its state is unknown, not stopped."""
    info = listing.view(name, store.read_state(name), store.read_config(name))
    info.update(state="unreachable", error=error.reason, pid=None, qmp=None, agent=None)
    info["agent_answered_at"] = None
    return info


def status(
    store: Store, name: str, wait_agent: float = 0.0, *, again: bool = True
) -> dict[str, Any]:
    """list's object for one VM, checked against the hypervisor when the VM is alive (and,
    on a libvirt host, always). The agent is asked once, at once (a guest without one is
    told without waiting), or for up to WAIT_AGENT seconds. A VM that stops while its agent
    is asked is looked at AGAIN (once): what it is now, not an error."""
    store.require(name)
    try:
        state = reconcile.current(store, name)
    except HostUnreachable as error:
        return _unreachable(store, name, error)
    try:
        config = store.read_config(name)
    except ClanVMError:
        config = None
    info = listing.view(name, state, config)
    if info["error"]:
        from clan_vm_tasks.vm import definition  # lazy: its schema is for show and start

        raise definition.Broken(name, info["error"])
    info["qmp"] = None
    if state.status in reconcile.ACTIVE:
        run_state = machines.machine(store, name, state).run_state(timeout=2.0)
        info["qmp"] = run_state is not None  # alive but not answering: hung, or a client attached
        if run_state is not None:
            info["state"] = run_state
    info["agent"], answered = None, None
    if info["state"] == "running":
        try:
            info["agent"], answered = guest.ping(store, name, wait_agent)
        except StateConflict:
            if again:
                return status(store, name, wait_agent, again=False)
            info["agent"] = False
    info["agent_answered_at"] = None if answered is None else _iso(answered)
    info["pending"] = _pending(store, name)
    return info


def _iso(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _pending(store: Store, name: str) -> dict[str, Any] | None:
    """What the VM's next start changes (``set`` while it ran, a flake's new definition)."""
    if not pending.path(store, name).exists():
        return None
    from clan_vm_tasks.vm import definition  # lazy: the schema, only when a change waits

    try:
        return pending.summary(store, name, definition.load(store, name))
    except ClanVMError:
        return None


def show(store: Store, settings: Settings, name: str) -> dict[str, Any]:
    """Everything about one VM: status, configuration, paths, accelerator, disk."""
    from clan_vm_tasks.models import dump
    from clan_vm_tasks.vm import definition

    info = status(store, name)
    if info["state"] == "unreachable":
        raise ClanVMError(
            f"VM '{name}': host {machines.where(info['host'])} is unreachable: {info['error']}"
        )
    config = definition.load(store, name)
    paths = store.paths(name)
    state = store.read_state(name)
    backend = machines.backend(config.host)
    if state.status in reconcile.ACTIVE and state.accel:
        info["accel"] = state.accel
    else:
        requested = config.accel if config.accel != "auto" else settings.accel
        info["accel"] = backend.choose_accel(requested).accel
    info.update(
        config=dump(config),
        directory=str(paths.dir),
        mac=config.network.mac,
        created_at=state.created_at,
    )
    info.update(backend.machine(paths, state).details(config))
    return info
