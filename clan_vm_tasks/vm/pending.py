"""A change of a VM's definition that waits for its next start, and the one step that makes
a changed definition true.

A running VM keeps the definition it runs. A change made meanwhile (``set``, or a flake
whose definition changed) is kept beside it as ``vms/NAME/next.json``; ``show`` and
``status`` say what it changes, and the next start applies it (``vm.create``).

Applying a definition to a stopped VM is written ahead (``recovery.journaled``) with the
whole new definition: a command killed halfway (the disk grown, the definition not yet
written) is finished by the next command (``finish``), so a change is applied whole or
not at all.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clan_vm_tasks.render import Notify
from clan_vm_tasks.state import history
from clan_vm_tasks.state.store import Store, VMState

if TYPE_CHECKING:  # the definitions' classes cost ``status`` more than it needs them
    from clan_vm_tasks.models import VMConfig

NEXT = "next.json"
LATE = " (recorded after the command that did it was killed)"


def path(store: Store, name: str) -> Path:
    return store.paths(name).dir / NEXT


def load(store: Store, name: str) -> VMConfig | None:
    """The definition NAME's next start applies, if a change waits (an unusable record is
    none: the change is then lost, never half taken)."""
    try:
        raw = path(store, name).read_bytes()
    except FileNotFoundError:
        return None
    from clan_vm_tasks.models import Malformed, VMConfig
    from clan_vm_tasks.models import load as load_model

    try:  # validated when it was written
        return load_model(VMConfig, json.loads(raw))
    except (Malformed, ValueError):
        return None


def save(store: Store, name: str, config: VMConfig) -> None:
    store.write(path(store, name), dump(config))


def clear(store: Store, name: str) -> None:
    path(store, name).unlink(missing_ok=True)


def dump(config: VMConfig) -> bytes:
    from clan_vm_tasks.models import dump as dump_model

    return json.dumps(dump_model(config), indent=2).encode()


def _flat(config: VMConfig) -> dict[str, Any]:
    """The definition as a user names its parts: network settings one by one, forwards as
    they are given on the command line."""
    from clan_vm_tasks.models import dump as dump_model

    data: dict[str, Any] = dump_model(config)
    data["disk"] = data.pop("disk_size")  # as set names it
    network = data.pop("network")
    data["network"] = network["mode"]
    for key in ("bridge", "tap", "mac"):
        data[key] = network[key]
    data["forwards"] = [
        f"{f['protocol']}:{f['host_port']}:{f['guest_port']}" for f in network["forward_ports"]
    ]
    return data


def differences(old: VMConfig, new: VMConfig) -> dict[str, dict[str, Any]]:
    """What NEW changes of OLD: {setting: {"from": ..., "to": ...}}."""
    before, after = _flat(old), _flat(new)
    return {
        key: {"from": before.get(key), "to": value}
        for key, value in after.items()
        if before.get(key) != value
    }


def words(changes: dict[str, dict[str, Any]]) -> str:
    """CHANGES in one line: "cpus 1 -> 2, memory 192 -> 256 MiB"."""

    def shown(value: Any) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(str(v) for v in value) + "]"
        if isinstance(value, str):
            return shlex.quote(value)
        return "none" if value is None else json.dumps(value)

    unit = {"memory": " MiB", "disk": " MiB"}
    return ", ".join(
        f"{key} {shown(c['from'])} -> {shown(c['to'])}{unit.get(key, '')}"
        for key, c in changes.items()
    )


def summary(store: Store, name: str, current: VMConfig | None) -> dict[str, Any] | None:
    """For ``status`` and ``show``: what the next start changes, or None."""
    waiting = load(store, name)
    if waiting is None or current is None:
        return None
    changes = differences(current, waiting)
    return {"changes": changes, "summary": words(changes)} if changes else None


def commit(
    store: Store, name: str, state: VMState, old: VMConfig, new: VMConfig, notify: Notify
) -> None:
    """Make NEW the definition of the stopped VM NAME (the caller holds its lock and has
    written ahead): its disks grow as NEW says, then the definition is replaced. A change
    that waited for the next start is then done or superseded (NEW was made from it)."""
    from clan_vm_tasks.vm import machines

    machines.machine(store, name, state).update_disks(old, new, notify)
    store.write(store.paths(name).config, dump(new))
    clear(store, name)


def finish(store: Store, name: str, action: str, expect: dict[str, Any], since: float) -> None:
    """After a killed command that was applying EXPECT["config"] (or, EXPECT["pending"], was
    keeping it for the next start): finish it and record its event if it was not (the
    caller holds the lock)."""
    from clan_vm_tasks.models import Malformed, VMConfig
    from clan_vm_tasks.models import load as load_model
    from clan_vm_tasks.vm import definition, reconcile

    try:  # validated before it was written ahead
        target = load_model(VMConfig, expect.get("config"))
    except Malformed:
        return  # not written by us: nothing to finish
    details = str(expect.get("details") or action)
    if expect.get("pending"):  # kept for the next start, or (withdraw) no longer
        took = load(store, name) == (None if expect.get("withdraw") else target)
    else:
        state = reconcile.current(store, name, locked=True)
        if state.status in reconcile.ACTIVE:
            return  # cannot be: it was stopped under the lock; leave it be
        old = definition.load(store, name)
        took = True
        if old != target:
            commit(store, name, state, old, target, lambda message: None)
        else:
            clear(store, name)
    if took and not history.recorded_since(store.history, name, action, since):
        history.record(store.history, name, action, details + LATE)
