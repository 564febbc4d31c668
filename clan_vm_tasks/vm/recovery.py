"""Finishing what killed commands left, at the start of every command.

``vm.leftovers`` finishes killed creates and deletes, ``state.sweep`` clears the
state directory's other leftovers. Here the actions that
were under way are finished: an action that changes a VM writes ahead a marker
(``journaled``) saying how to tell that it took effect; if its command dies
after the change but before its history event, the next command sees the marker
and records the event (and a disk whose size may have changed gets its
recorded size from the image).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.state.sweep import sweep

LATE = " (recorded after the command that did it was killed)"
# Actions that rewrite the disk image with qemu-img while the VM is stopped.
DISK_ACTIONS = ("resize", "snapshot", "snapshot-delete", "revert", "set", "reconfigure")
# Actions that apply a whole new definition (``vm.pending``): finished, not undone.
DEFINITION_ACTIONS = ("set", "reconfigure")


@contextlib.contextmanager
def journaled(store: Store, name: str, action: str, **expect: Any) -> Iterator[None]:
    """Write ahead that ACTION of NAME is under way (the caller holds the VM lock and
    records the event inside the block). A command that fails normally removes the
    marker; only a killed one leaves it, for ``recover``."""
    store.begin(name, action, json.dumps(expect).encode())
    try:
        yield
    finally:
        store.done(name, action)


def recover(store: Store, warn: Notify = notice) -> None:
    if _hidden_vm_dirs(store):
        from clan_vm_tasks.vm import leftovers  # lazy: usually nothing was left

        leftovers.finish(store, warn)
    sweep(store, warn)
    for name, action, marker in store.pending_work():
        fd = store.try_lock(name)
        if fd is None:
            continue  # its command is still at work
        try:
            if store.exists(name):
                _finish(store, name, action, marker)
            store.done(name, action)
        except (OSError, ValueError, ClanVMError) as error:  # tried again by the next command
            warn(f"warning: could not finish an interrupted {action} of '{name}': {error}")
        finally:
            store.drop_lock_file(name)
            os.close(fd)


def _hidden_vm_dirs(store: Store) -> bool:
    try:
        return any(entry.startswith(".") for entry in os.listdir(store.vms))
    except FileNotFoundError:
        return False


def _finish(store: Store, name: str, action: str, marker: Path) -> None:
    """Record ACTION's event if it took effect and was not recorded (the lock is held)."""
    from clan_vm_tasks.state import history  # lazy: usually nothing is pending
    from clan_vm_tasks.vm import machines, reconcile

    expect: dict[str, Any] = json.loads(marker.read_bytes() or b"{}")
    since = os.stat(marker).st_mtime
    state = reconcile.current(store, name, locked=True)
    machine = machines.machine(store, name, state)
    if action in DISK_ACTIONS and state.status not in reconcile.ACTIVE:
        repaired = machine.repair_disk()  # a killed qemu-img can leave the image inconsistent
        if repaired:
            history.record(store.history, name, "repair", f"disk: {repaired} (after {action})")
    if action in DEFINITION_ACTIONS:
        from clan_vm_tasks.vm import pending

        pending.finish(store, name, action, expect, since)
        return
    details: str | None = None
    if action == "create":
        details = "created"
    elif action in ("start", "restart") and state.status in reconcile.ACTIVE:
        details = f"pid {state.pid}, {state.accel}" if state.pid else f"{state.accel}"
    elif action == "stop" and state.status == "stopped" and state.stop_step:
        details = f"{state.stop_step}"
    elif action == "resize":
        size = sync_disk_size(store, name)
        if size != expect.get("from"):
            details = f"disk {expect.get('from')} MiB -> {size} MiB"
    elif action in ("snapshot", "snapshot-delete", "revert"):
        tag = str(expect.get("tag"))
        active = state.status in reconcile.ACTIVE
        snaps = machine.live_snapshots() if active else machine.disk_snapshots()
        present = any(s.name == tag for s in snaps)
        if action == "revert":
            sync_disk_size(store, name)
            details = f"'{tag}' (it may not have completed)"
        elif present == (action == "snapshot"):
            details = f"'{tag}'"
    if details is not None and not history.recorded_since(store.history, name, action, since):
        history.record(store.history, name, action, details + LATE)


def sync_disk_size(store: Store, name: str) -> int:
    """Record the disk's real size in the definition if it differs; the caller holds the
    lock. Returns the size in MiB."""
    from clan_vm_tasks.vm import machines

    size = machines.machine(store, name, store.read_state(name)).disk_size_mib()
    config = store.read_config(name)
    if config.get("disk_size") != size:
        config["disk_size"] = size
        store.write(store.paths(name).config, json.dumps(config, indent=2).encode())
    return size
