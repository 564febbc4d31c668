"""``set``: change the definition of a VM made on the command line, as ``limactl edit`` or
``virsh setvcpus --config`` do. A stopped VM changes at once; a running one keeps what it
runs and the change waits for its next start (``vm.pending``), applied by the same step as
a flake's changed definition (``vm.create.reconfigure``).

The new definition is worked out and checked whole before anything is written: a wrong
request changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.models import PortForward, VMConfig, dump
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import history
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import definition, pending, reconcile
from clan_vm_tasks.vm.create import mac_registry, reconfigure_locked
from clan_vm_tasks.vm.recovery import journaled

USER_MODES = ("user", "nat")
# --no-forward: all, or [tcp|udp:]HOSTPORT[:GUESTPORT] (HOSTPORT may be auto).
_REMOVAL = re.compile(r"(?:(tcp|udp):)?([0-9]{1,5}|auto)(?::([0-9]{1,5}))?")


@dataclass(frozen=True)
class Edit:
    """What ``set`` was asked to change (None: leave it)."""

    cpus: int | None = None
    memory: int | None = None
    disk: int | None = None  # MiB; only growing
    append: str | None = None  # "" removes the kernel command line
    network: str | None = None
    bridge: str | None = None
    tap: str | None = None
    add_forwards: tuple[PortForward, ...] = ()
    remove_forwards: tuple[str, ...] = ()

    def empty(self) -> bool:
        return self == Edit()


@dataclass(frozen=True)
class Edited:
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # what this set changed
    pending: bool = False  # the VM runs: the change waits for its next start
    withdrawn: bool = False  # the change that waited is taken back (set to what runs)

    @property
    def summary(self) -> str:
        return pending.words(self.changes)


def _spec(forward: PortForward) -> str:
    return f"{forward.protocol}:{forward.host_port}:{forward.guest_port}"


def _removes(spec: str, forward: PortForward) -> bool:
    found = _REMOVAL.fullmatch(spec)
    assert found is not None
    protocol, host, guest = found.groups()
    return (
        (protocol is None or protocol == forward.protocol)
        and host == str(forward.host_port)
        and (guest is None or int(guest) == forward.guest_port)
    )


def check_removal(spec: str) -> str:
    if spec != "all" and not _REMOVAL.fullmatch(spec):
        raise InvalidInput(
            f"invalid --no-forward {spec!r}: expected HOSTPORT, tcp:HOSTPORT, "
            "tcp:HOSTPORT:GUESTPORT (HOSTPORT may be auto) or all"
        )
    return spec


def _forwards(name: str, now: list[PortForward], edit: Edit) -> list[PortForward]:
    """NOW without what EDIT removes (each removal must name a forward), plus what it adds."""
    kept = list(now)
    for spec in edit.remove_forwards:
        if spec == "all":
            kept = []
            continue
        left = [f for f in kept if not _removes(spec, f)]
        if len(left) == len(kept):
            has = ", ".join(_spec(f) for f in now) or "none"
            raise InvalidInput(
                f"VM '{name}' has no forward {spec!r} to remove (its forwards: {has})"
            )
        kept = left
    for forward in edit.add_forwards:
        if forward in kept:
            raise InvalidInput(f"VM '{name}' already forwards {_spec(forward)}")
        kept.append(forward)
    return kept


def edited(config: VMConfig, edit: Edit) -> VMConfig:
    """CONFIG changed as EDIT says, validated (InvalidInput names what is wrong)."""
    name = config.name
    data: dict[str, Any] = dump(config)
    for key, value in (("cpus", edit.cpus), ("memory", edit.memory), ("disk_size", edit.disk)):
        if value is not None:
            data[key] = value
    if edit.append is not None:
        data["append"] = edit.append or None
    network = data["network"]
    if edit.network is not None:
        network.update(mode=edit.network, bridge=None, tap=None)
    if edit.bridge is not None:
        if network["mode"] != "bridge":
            raise InvalidInput(
                f"--bridge needs --network bridge (VM '{name}' has {network['mode']})"
            )
        network["bridge"] = edit.bridge
    if edit.tap is not None:
        if network["mode"] != "tap":
            raise InvalidInput(f"--tap needs --network tap (VM '{name}' has {network['mode']})")
        network["tap"] = edit.tap
    forwards = _forwards(name, config.network.forward_ports, edit)
    if forwards and network["mode"] not in USER_MODES:
        raise InvalidInput(
            f"VM '{name}' forwards {', '.join(_spec(f) for f in forwards)}, which needs "
            f"user-mode networking, not {network['mode']}: add --no-forward all"
        )
    network["forward_ports"] = [dump(f) for f in forwards]
    from clan_vm_tasks.schema import validate  # what writes a definition pays for pydantic

    return validate(VMConfig, data, "VM definition")


def set_vm(store: Store, name: str, edit: Edit, notify: Notify = notice) -> Edited:
    """Apply EDIT to VM NAME: at once when it is stopped, at its next start when it runs (on
    top of a change already waiting). A smaller disk is refused; so is anything the VM's
    backend cannot run."""
    store.require(name)
    with store.lock(name), mac_registry(store):
        current = definition.load(store, name)
        if edit.disk is not None and edit.disk < current.disk_size:
            raise InvalidInput(
                f"refusing to shrink the disk of VM '{name}' from {current.disk_size} MiB to "
                f"{edit.disk} MiB (data would be lost); only growing is supported"
            )
        waiting = pending.load(store, name)
        base = waiting or current
        new = definition.with_mac(definition.check(edited(base, edit), store))
        changes = pending.differences(base, new)
        if not changes:
            return Edited(pending=waiting is not None)
        running = reconcile.current(store, name, locked=True).status in reconcile.ACTIVE
        if waiting is not None and new == current:
            _withdraw(store, name, current, pending.words(changes), running)
            return Edited(changes, withdrawn=True)
        if not running:  # what waited is applied with it
            changes = pending.differences(current, new)
        details = pending.words(changes)
        done = reconfigure_locked(store, name, new, False, notify, "set", details=details)
    return Edited(changes, pending=done.pending)


def _withdraw(store: Store, name: str, current: VMConfig, words: str, running: bool) -> None:
    """The change that waited is set back to what runs: it no longer waits."""
    details = f"{words} (the change waiting for the next start is withdrawn)"
    target = dump(current)
    with journaled(
        store, name, "set", config=target, details=details, pending=running, withdraw=True
    ):
        pending.clear(store, name)
        history.record(store.history, name, "set", details)
