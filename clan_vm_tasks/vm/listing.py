"""The fast VM list: hundreds of VMs without pydantic or QMP, only their files and /proc
(and one question to each libvirt host, see ``survey``)."""

from __future__ import annotations

import json
from typing import Any

from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store, VMState
from clan_vm_tasks.vm import reconcile


def problem(name: str, config: Any) -> str | None:
    """Why a stored definition is unusable, as far as a cheap look tells (None: usable)."""
    if not isinstance(config, dict):
        return "its definition (config.json) is unreadable"
    if config.get("name") != name:
        return f"its definition names another VM ({config.get('name')!r})"
    for field in ("cpus", "memory", "disk_size"):
        value = config.get(field)
        if type(value) is not int or value < 1:
            return f"its definition has an invalid {field} ({value!r})"
    if not isinstance(config.get("network"), dict):
        return "its definition has no network"
    return None


def view(name: str, state: VMState, config: Any) -> dict[str, Any]:
    """The stable JSON object for one VM (list and status)."""
    broken = problem(name, config)
    if broken:
        config = {}
    network = config.get("network") if isinstance(config.get("network"), dict) else {}
    assert isinstance(network, dict)
    forwards = [
        f"{f.get('protocol', 'tcp')}:127.0.0.1:{f.get('host_port')}->{f.get('guest_port')}"
        for f in network.get("forward_ports", [])
        if isinstance(f, dict)
    ]
    active = state.status in reconcile.ACTIVE
    if active and state.forwards:
        forwards = state.forwards  # with the host ports chosen for "auto" at start
    return {
        "name": name,
        "state": "broken" if broken else state.status,
        "error": broken,
        "pid": state.pid if active else None,
        "cpus": config.get("cpus"),
        "memory": config.get("memory"),
        "disk_size": config.get("disk_size"),
        "network": network.get("mode"),
        "forwards": forwards,
        "started_at": state.started_at if active else None,
        "stopped_at": None if active else state.stopped_at,
        "last_stop": None if active else state.stop_step,
        "host": config.get("host"),  # the libvirt host; None: this machine
    }


_MISSING = object()  # no such file: the entry is no VM (a half-made or half-gone one)


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return _MISSING
    except (OSError, ValueError):
        return None


def list_vms(
    store: Store,
    state_filter: str | None = None,
    host: str | None = None,
    settings: Settings | None = None,
) -> list[dict[str, Any]]:
    """Every VM's row; with HOST only those on that libvirt host (a name or a URI)."""
    from clan_vm_tasks.vm import survey

    names = store.entries()  # a VM is an entry with a config.json, read below anyway
    found: list[tuple[str, VMState, dict[str, Any]]] = []
    for name in names:
        # Plain string paths: pathlib's overhead is most of the cost with hundreds of VMs.
        base = f"{store.vms}/{name}"
        config = _read_json(f"{base}/config.json")
        if config is _MISSING:
            continue
        found.append((name, VMState.from_raw(_read_json(f"{base}/state.json")), config))
    if host is not None:
        found = survey.placed_on(found, host, settings)
    rows = survey.list_rows(store, found, view, settings)
    return [
        rows[name]
        for name in names
        if name in rows and (not state_filter or rows[name]["state"] == state_filter)
    ]
