"""Before a start: a fixed host port that another VM of ours forwards right now is refused,
naming that VM (QEMU alone would only say that the port is in use)."""

from __future__ import annotations

from clan_vm_tasks.errors import StateConflict
from clan_vm_tasks.models import PortForward, VMConfig, recorded_forward
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import machines, reconcile


def holder(store: Store, name: str, config: VMConfig) -> tuple[str, PortForward] | None:
    """The first forward of CONFIG with a fixed host port that another running VM of ours
    forwards on the same address, and that VM, if any."""
    fixed = {
        (f.protocol, f.host_port): f for f in config.network.forward_ports if f.host_port != "auto"
    }
    if not fixed:
        return None
    address = machines.backend(config.host).address
    for other in store.names():
        if other == name:
            continue
        state = store.read_state(other)
        if state.status not in reconcile.ACTIVE:
            continue
        for text in state.forwards:
            found = recorded_forward(text)
            if found is None or found[0] != address:
                continue
            key = (found[1].protocol, found[1].host_port)
            if key in fixed and machines.machine(store, other, state).alive():
                return other, fixed[key]
    return None


def refuse_held(store: Store, name: str, config: VMConfig) -> None:
    held = holder(store, name, config)
    if held is not None:
        other, forward = held
        spec = f"{forward.protocol}:{forward.host_port}"
        raise StateConflict(
            f"host port {spec} of VM '{name}' is forwarded by VM '{other}', which is running: "
            f"stop it (clan-vm-manager stop {other}) or give '{name}' another port "
            f"(clan-vm-manager set {name} --no-forward {spec} --forward "
            f"{spec.split(':')[0]}:auto:{forward.guest_port})"
        )
