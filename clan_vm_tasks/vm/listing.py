"""The fast VM list: hundreds of VMs without pydantic or QMP, only their files and /proc."""

from __future__ import annotations

import json
from typing import Any

from clan_vm_tasks.state.store import Store, VMState
from clan_vm_tasks.vm import reconcile


def view(name: str, state: VMState, config: dict[str, Any]) -> dict[str, Any]:
    """The stable JSON object for one VM (list and status)."""
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
        "state": state.status,
        "pid": state.pid if active else None,
        "cpus": config.get("cpus"),
        "memory": config.get("memory"),
        "disk_size": config.get("disk_size"),
        "network": network.get("mode"),
        "forwards": forwards,
        "started_at": state.started_at if active else None,
        "stopped_at": None if active else state.stopped_at,
        "last_stop": None if active else state.stop_step,
    }


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def list_vms(store: Store, state_filter: str | None = None) -> list[dict[str, Any]]:
    result = []
    for name in store.names():
        # Plain string paths: pathlib's overhead is most of the cost with hundreds of VMs.
        base = f"{store.vms}/{name}"
        state = VMState.from_raw(_read_json(f"{base}/state.json"))
        if state.status in reconcile.ACTIVE:  # only these can have changed behind our back
            state = reconcile.current(store, name)
        if state_filter and state.status != state_filter:
            continue
        config = _read_json(f"{base}/config.json")
        result.append(view(name, state, config if isinstance(config, dict) else {}))
    return result
