"""Keeping the clan inventory in step with VMs: pushed after create and start, removed on delete.

A failed automatic update does not undo the VM operation that succeeded; it is
reported as a warning (the explicit ``inventory push`` task reports it as an error).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from clan_vm_tasks.clan import inventory
from clan_vm_tasks.render import Notify
from clan_vm_tasks.state.store import Store


def _local(ref: str) -> Path | None:
    path = Path(ref.removeprefix("path:").removeprefix("git+file://"))
    return path.absolute() if path.is_dir() else None


def flake_dir(flake: str | None = None, start: Path | None = None) -> Path | None:
    """The local flake we work with: FLAKE (``--flake``) or ``$CLAN_VM_FLAKE`` when they are
    directories, else the nearest directory with a flake.nix at or above START (the cwd)."""
    explicit = flake or os.environ.get("CLAN_VM_FLAKE")
    if explicit:
        return _local(explicit)
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        if (directory / "flake.nix").is_file():
            return directory
    return None


def clan_dir(explicit: str | None, flake: str | None = None) -> Path | None:
    return inventory.find_clan_dir(Path(explicit) if explicit else None, flake_dir(flake))


def ssh_port(store: Store, name: str) -> int | None:
    """The host port forwarded to the guest's SSH port 22, if any.

    While the VM runs, the ports chosen at start count (``auto`` ones included);
    otherwise only a fixed port from the definition is known.
    """
    for forward in store.read_state(name).forwards:
        match = re.fullmatch(r"tcp:127\.0\.0\.1:(\d+)->22", forward)
        if match:
            return int(match.group(1))
    network = store.read_config(name).get("network")
    forwards = network.get("forward_ports", []) if isinstance(network, dict) else []
    for forward in forwards:
        if not isinstance(forward, dict) or forward.get("protocol", "tcp") != "tcp":
            continue
        if forward.get("guest_port") == 22 and isinstance(forward.get("host_port"), int):
            return int(forward["host_port"])
    return None


def push(store: Store, name: str, directory: Path | None, notify: Notify) -> None:
    """After create or start. Under the VM's lock, and only while the VM exists: a late
    push never brings back an entry that a racing delete took out."""
    if directory is None:
        return
    with store.lock(name):
        if not store.exists(name):
            return
        try:
            if inventory.push(directory, name, ssh_port=ssh_port(store, name)):
                notify(f"added '{name}' to {directory / inventory.INVENTORY_FILE}")
        except inventory.InventoryError as error:
            notify(f"warning: the clan inventory was not updated: {error}")


def forget(store: Store, name: str, directory: Path | None, notify: Notify) -> None:
    """After delete, under the VM's lock (unless the name was created again meanwhile)."""
    if directory is None:
        return
    with store.lock(name):
        if store.exists(name):
            return
        try:
            if inventory.remove(directory, name):
                notify(f"removed '{name}' from {directory / inventory.INVENTORY_FILE}")
        except inventory.InventoryError as error:
            notify(f"warning: the clan inventory was not updated: {error}")
