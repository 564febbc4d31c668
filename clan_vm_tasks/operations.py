"""Pause, resume and disk resize: small operations with strict state rules (as libvirt's TCK)."""

from __future__ import annotations

import json

from clan_vm_tasks import disks, fsutil, history, reconcile
from clan_vm_tasks.errors import ClanVMError, InvalidInput, StateConflict
from clan_vm_tasks.qemu.qmp import Monitor
from clan_vm_tasks.store import Store


def _set_running(store: Store, name: str, pause: bool) -> None:
    paths = store.require(name)
    with store.lock(name):
        state = reconcile.current(store, name, locked=True)
        verb = "pause" if pause else "resume"
        if state.status not in reconcile.ACTIVE:
            raise StateConflict(f"VM '{name}' is not running (it is {state.status}); cannot {verb}")
        with Monitor(paths.qmp_socket) as mon:
            # QEMU's own view decides, in case ours is stale (e.g. paused by another client).
            paused = mon.execute("query-status").get("status") == "paused"
            if paused == pause:
                raise StateConflict(
                    f"VM '{name}' is already paused" if pause else f"VM '{name}' is not paused"
                )
            mon.execute("stop" if pause else "cont")
        state.status = "paused" if pause else "running"
        store.write_state(name, state)
    history.record(store.history, name, verb, "over QMP")


def pause(store: Store, name: str) -> None:
    """Freeze a running VM's CPUs; memory and devices stay as they are."""
    _set_running(store, name, pause=True)


def resume(store: Store, name: str) -> None:
    _set_running(store, name, pause=False)


def resize(store: Store, name: str, size_mib: int) -> tuple[int, int]:
    """Grow a stopped VM's disk to SIZE_MIB; returns (old, new) size in MiB."""
    paths = store.require(name)
    with store.lock(name):
        state = reconcile.current(store, name, locked=True)
        if state.status in reconcile.ACTIVE:
            raise StateConflict(
                f"VM '{name}' is {state.status}; stop it to resize its disk "
                f"(clan-vm-manager stop {name})"
            )
        old = disks.size_mib_ceil(paths.disk)
        if size_mib < old:
            raise InvalidInput(
                f"refusing to shrink the disk of VM '{name}' from {old} MiB to {size_mib} MiB "
                "(data would be lost); only growing is supported"
            )
        if size_mib == old:
            return old, old
        disks.resize(paths.disk, size_mib)
        config = store.read_config(name)
        config["disk_size"] = size_mib
        try:
            fsutil.atomic_write(paths.config, json.dumps(config, indent=2).encode())
        except OSError as error:
            raise ClanVMError(f"disk grown but the definition was not updated: {error}") from None
    history.record(store.history, name, "resize", f"disk {old} MiB -> {size_mib} MiB")
    return old, size_mib
