"""Looking at a VM: its status checked with the hypervisor, everything about it, its console."""

from __future__ import annotations

import json
import os
from typing import Any

from clan_vm_tasks.errors import ClanVMError, StateConflict
from clan_vm_tasks.state import files
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import definition, listing, machines, reconcile
from clan_vm_tasks.vm.stop import require_active


def status(store: Store, name: str) -> dict[str, Any]:
    """list's object for one VM, checked against the hypervisor when the VM is alive."""
    store.require(name)
    state = reconcile.current(store, name)
    try:
        config = store.read_config(name)
    except ClanVMError:
        config = None
    info = listing.view(name, state, config)
    if info["error"]:
        raise definition.Broken(name, info["error"])
    info["qmp"] = None
    if state.status in reconcile.ACTIVE:
        run_state = machines.machine(store, name, state).run_state(timeout=2.0)
        info["qmp"] = run_state is not None  # alive but not answering: hung, or a client attached
        if run_state is not None:
            info["state"] = run_state
    return info


def show(store: Store, settings: Settings, name: str) -> dict[str, Any]:
    """Everything about one VM: status, configuration, paths, accelerator, disk."""
    info = status(store, name)
    config = definition.load(store, name)
    paths = store.paths(name)
    state = store.read_state(name)
    if state.status in reconcile.ACTIVE and state.accel:
        info["accel"] = state.accel
    else:
        requested = config.accel if config.accel != "auto" else settings.accel
        info["accel"] = machines.backend().choose_accel(requested).accel
    disk = machines.machine(store, name, state).disk_info()
    info.update(
        config=json.loads(config.model_dump_json()),
        console_log=str(paths.console_log),
        directory=str(paths.dir),
        qmp_socket=str(paths.qmp_socket),
        serial_socket=str(paths.serial_socket),
        mac=config.network.mac,
        created_at=state.created_at,
        disks=[
            {
                "path": str(paths.disk),
                "format": disk.get("format"),
                "virtual_size": disk.get("virtual-size"),
                "actual_size": disk.get("actual-size"),
                "backing_file": disk.get("full-backing-filename", disk.get("backing-filename")),
                "backing_format": disk.get("backing-filename-format"),
            }
        ],
    )
    return info


def console_log(store: Store, name: str) -> bytes:
    store.require(name)
    return machines.machine(store, name, store.read_state(name)).console_output(0)


def attach_console(store: Store, name: str) -> str:
    store.require(name)
    with store.lock(name, timeout=5):
        state = require_active(store, name)
    # QEMU serves one console client at a time and would leave a second one hanging.
    held = files.try_lock(store.root / "locks" / f"{name}.console")
    if held is None:
        raise StateConflict(f"the console of VM '{name}' is already attached elsewhere")
    try:
        return machines.machine(store, name, state).attach_console()
    finally:
        os.close(held)
