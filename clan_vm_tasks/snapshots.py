"""Internal qcow2 snapshots: of the disk when the VM is stopped, of the whole VM when it runs.

A stopped VM's disk is snapshotted with ``qemu-img snapshot``. A running (or
paused) VM goes through QMP's snapshot-save/-load/-delete jobs, which also
save and restore the guest's memory and device state, so reverting a running
VM brings back the running guest as it was.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from clan_vm_tasks import disks, history, reconcile
from clan_vm_tasks.errors import ClanVMError, InvalidInput, StateConflict
from clan_vm_tasks.qemu.jobs import run_job
from clan_vm_tasks.qemu.qmp import Monitor
from clan_vm_tasks.store import Store, VMPaths

# Saving memory state blocks QMP while it runs; give it time on a slow TCG host.
JOB_TIMEOUT = 300.0
DRIVE_ID = "disk0"  # the -drive id in qemu/argv.py
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


@dataclass(frozen=True)
class Snapshot:
    name: str
    date: str  # ISO 8601, UTC
    vm_state_size: int  # bytes of saved memory/device state; 0 for a disk-only snapshot
    vm_clock: float  # seconds the guest had run when it was taken

    @property
    def memory(self) -> bool:
        return self.vm_state_size > 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "memory": self.memory}


def check_name(snap: str) -> str:
    # qcow2 looks snapshots up by id or by name: an all-digit name could mean another's id.
    if not _NAME.fullmatch(snap) or snap.isdigit():
        raise InvalidInput(
            f"invalid snapshot name {snap!r}: use letters, digits, '.', '_', '+', '-' "
            "(up to 64, not only digits)"
        )
    return snap


def _parse(entry: dict[str, Any]) -> Snapshot:
    seconds = int(entry.get("date-sec", 0)) + int(entry.get("date-nsec", 0)) / 1e9
    return Snapshot(
        name=str(entry.get("name", "")),
        date=datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds"),
        vm_state_size=int(entry.get("vm-state-size", 0)),
        vm_clock=int(entry.get("vm-clock-sec", 0)) + int(entry.get("vm-clock-nsec", 0)) / 1e9,
    )


def _inserted(mon: Monitor) -> dict[str, Any]:
    for device in mon.execute("query-block"):
        if device.get("device") == DRIVE_ID and "inserted" in device:
            inserted: dict[str, Any] = device["inserted"]
            return inserted
    raise ClanVMError(f"QEMU has no drive {DRIVE_ID}")


def _live(mon: Monitor) -> tuple[str, list[Snapshot]]:
    """The disk's block node name (for the jobs) and its snapshots."""
    inserted = _inserted(mon)
    found = inserted.get("image", {}).get("snapshots", [])
    return str(inserted["node-name"]), [_parse(s) for s in found]


def _offline(paths: VMPaths) -> list[Snapshot]:
    return [_parse(s) for s in disks.snapshots(paths.disk)]


def _find(snaps: list[Snapshot], snap: str, name: str) -> Snapshot:
    for found in snaps:
        if found.name == snap:
            return found
    known = ", ".join(s.name for s in snaps) or "none"
    raise InvalidInput(f"VM '{name}' has no snapshot named '{snap}' (it has: {known})")


def _refuse_taken(snaps: list[Snapshot], snap: str, name: str) -> None:
    if any(s.name == snap for s in snaps):
        raise StateConflict(
            f"VM '{name}' already has a snapshot named '{snap}' "
            f"(delete it first: clan-vm-manager snapshot {name} {snap} --delete)"
        )


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def list_snapshots(store: Store, name: str) -> list[Snapshot]:
    paths = store.require(name)
    with store.lock(name):
        if reconcile.current(store, name, locked=True).status in reconcile.ACTIVE:
            with Monitor(paths.qmp_socket) as mon:
                return _live(mon)[1]
        return _offline(paths)


def take(store: Store, name: str, snap: str, *, live: bool = False) -> Snapshot:
    """Snapshot a VM: with memory state if it runs, its disk only if it is stopped."""
    check_name(snap)
    paths = store.require(name)
    with store.lock(name):
        state = reconcile.current(store, name, locked=True)
        if state.status in reconcile.ACTIVE:
            with Monitor(paths.qmp_socket, timeout=JOB_TIMEOUT) as mon:
                node, snaps = _live(mon)
                _refuse_taken(snaps, snap, name)
                job = {"tag": snap, "vmstate": node, "devices": [node]}
                run_job(mon, "snapshot-save", job, JOB_TIMEOUT)
                taken = _find(_live(mon)[1], snap, name)
        elif live:
            raise StateConflict(
                f"VM '{name}' is not running (it is {state.status}); a live snapshot needs "
                "a running VM (without --live a stopped VM's disk is snapshotted)"
            )
        else:
            _refuse_taken(_offline(paths), snap, name)
            disks.snapshot(paths.disk, "-c", snap)
            taken = _find(_offline(paths), snap, name)
    what = f"with memory state ({_mib(taken.vm_state_size)})" if taken.memory else "disk only"
    history.record(store.history, name, "snapshot", f"'{snap}', {what}")
    return taken


def revert(store: Store, name: str, snap: str) -> tuple[Snapshot, str]:
    """Go back to a snapshot; returns it and the VM's state afterwards."""
    check_name(snap)
    paths = store.require(name)
    with store.lock(name):
        state = reconcile.current(store, name, locked=True)
        if state.status in reconcile.ACTIVE:
            with Monitor(paths.qmp_socket, timeout=JOB_TIMEOUT) as mon:
                node, snaps = _live(mon)
                target = _find(snaps, snap, name)
                if not target.memory:
                    raise StateConflict(
                        f"snapshot '{snap}' of VM '{name}' holds only disk state; reverting a "
                        f"running VM's disk is refused: stop it first (clan-vm-manager stop {name})"
                    )
                job = {"tag": snap, "vmstate": node, "devices": [node]}
                run_job(mon, "snapshot-load", job, JOB_TIMEOUT)
                # Loading keeps QEMU's run state (running stays running, paused paused).
                running = mon.execute("query-status").get("status") != "paused"
            status = "running" if running else "paused"
            if status != state.status:
                state.status = status
                store.write_state(name, state)
        else:
            target = _find(_offline(paths), snap, name)
            disks.snapshot(paths.disk, "-a", snap)
            status = state.status
    how = "memory and disk" if state.status in reconcile.ACTIVE else "disk"
    history.record(store.history, name, "revert", f"'{snap}' ({how}); VM {status}")
    return target, status


def delete(store: Store, name: str, snap: str) -> None:
    check_name(snap)
    paths = store.require(name)
    with store.lock(name):
        if reconcile.current(store, name, locked=True).status in reconcile.ACTIVE:
            with Monitor(paths.qmp_socket, timeout=JOB_TIMEOUT) as mon:
                node, snaps = _live(mon)
                _find(snaps, snap, name)
                run_job(mon, "snapshot-delete", {"tag": snap, "devices": [node]}, JOB_TIMEOUT)
        else:
            _find(_offline(paths), snap, name)
            disks.snapshot(paths.disk, "-d", snap)
    history.record(store.history, name, "snapshot-delete", f"'{snap}'")
