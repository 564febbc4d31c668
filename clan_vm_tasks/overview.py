"""The VM list: fast enough for hundreds of VMs (no pydantic, no QMP, only /proc)."""

from __future__ import annotations

from typing import Any

from clan_vm_tasks import reconcile
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.store import Store, VMState


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


def list_vms(store: Store, state_filter: str | None = None) -> list[dict[str, Any]]:
    result = []
    for name in store.names():
        state = reconcile.current(store, name)
        if state_filter and state.status != state_filter:
            continue
        try:
            config = store.read_config(name)
        except ClanVMError:
            config = {}
        result.append(view(name, state, config))
    return result
