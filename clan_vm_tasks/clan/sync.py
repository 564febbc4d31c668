"""Keeping the clan inventory in step with VMs: pushed after create and start, removed on delete,
with clan's semantics: an entry in ``inventory.json`` is a machine ``clan machines update``
deploys.

- The clan is only what the user names: ``--clan-dir`` or ``$CLAN_DIR`` (and the explicit
  ``inventory`` task), never a directory that merely holds an ``inventory.json``.
- A VM of a clan machine (``nixosConfiguration``) is a VM of that machine: it gets no entry
  of its own; the user learns to change it with ``switch``, not with clan's deployment (which
  would install the machine's boot loader and file systems into it).
- An ad-hoc VM gets an entry (tag ``vm``), with a notice of what that means to clan.
- A clan in the Nix store is read-only: nothing is written there, a one-line notice says so.

A failed automatic update does not undo the VM operation that succeeded; it is
reported as a warning (the explicit ``inventory push`` task reports it as an error).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from clan_vm_tasks.clan import inventory
from clan_vm_tasks.clan.nixstore import in_store
from clan_vm_tasks.errors import HostUnreachable
from clan_vm_tasks.render import Notify
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import machines


def flake_dir(start: Path | None = None) -> Path | None:
    """The nearest directory with a flake.nix at or above START (the cwd)."""
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        if (directory / "flake.nix").is_file():
            return directory
    return None


def clan_dir(explicit: str | None) -> Path | None:
    """The clan the user named for automatic updates: ``--clan-dir``, else ``$CLAN_DIR``."""
    return inventory.find_clan_dir(Path(explicit) if explicit else None, None)


def named_clan_dir(explicit: str | None) -> Path | None:
    """For the ``inventory`` task, which names the clan by being run: ``--clan-dir``,
    ``$CLAN_DIR``, else the flake around the working directory if it holds an inventory."""
    return inventory.find_clan_dir(Path(explicit) if explicit else None, flake_dir())


def clan_machine(store: Store, name: str) -> str | None:
    """The NixOS configuration (a clan machine) VM NAME is the VM variant of, if any."""
    value = store.read_config(name).get("nixos_configuration")
    return value if isinstance(value, str) and value else None


def update_hint(name: str, machine: str) -> str:
    """How to change the VM of a clan machine: as a VM, never with the machine's own
    deployment."""
    return (
        f"change it with clan-vm-manager switch {name} (its VM variant), not with clan machines "
        f"update {machine}, which would install the machine's own boot loader and file "
        "systems into it"
    )


def ssh_target(store: Store, name: str) -> tuple[int, str] | None:
    """(port, address) where the guest's SSH port 22 is reached from this machine, if any.

    A forward to it: on 127.0.0.1 for a VM here, on its libvirt host for a VM there (while
    the VM runs the ports chosen at start count, ``auto`` ones included; otherwise only a
    fixed port from the definition is known). A VM bridged on a libvirt host: the guest's
    own address, as its host learns it.
    """
    from clan_vm_tasks.vm import ssh  # lazy: a start or a list without a clan needs none

    found = ssh.forwarded(store, name)
    if found is not None:
        return found[1], found[0]
    config = store.read_config(name)
    host = config.get("host") if isinstance(config.get("host"), str) else None
    network = config.get("network")
    forwards = network.get("forward_ports", []) if isinstance(network, dict) else []
    for forward in forwards:
        if not isinstance(forward, dict) or forward.get("protocol", "tcp") != "tcp":
            continue
        if forward.get("guest_port") == 22 and isinstance(forward.get("host_port"), int):
            address = machines.backend(host).address
            return int(forward["host_port"]), address
    if isinstance(network, dict) and network.get("mode") == "bridge":
        guest = machines.backend(host).guest_address(name)
        if guest is not None:
            return 22, guest
    return None


def push(store: Store, name: str, directory: Path | None, notify: Notify) -> None:
    """After create or start. Under the VM's lock, and only while the VM exists: a late
    push never brings back an entry that a racing delete took out. A VM in the inventory
    remembers the clan (its state), so ``delete`` takes it out without being told."""
    if directory is None:
        return
    path = directory / inventory.INVENTORY_FILE
    if in_store(directory):
        notify(f"notice: {path} is in the Nix store (read-only): the clan inventory is not updated")
        return
    with store.lock(name):
        if not store.exists(name):
            return
        try:
            machine = clan_machine(store, name)
            if machine is not None:
                notify(
                    f"notice: '{name}' is the VM of the clan machine {machine}, which needs no "
                    f"inventory entry of its own; {update_hint(name, machine)}"
                )
                return
            new = not inventory.has_machine(directory, name)
            port, address = ssh_target(store, name) or (None, "127.0.0.1")
            if inventory.push(directory, name, ssh_port=port, address=address) and new:
                notify(
                    f"added '{name}' to {path}: `clan machines update` now treats it as a "
                    f"machine to deploy (clan-vm-manager inventory remove {name} takes it out)"
                )
            remember(store, name, directory)
        except (inventory.InventoryError, HostUnreachable) as error:
            notify(f"warning: the clan inventory was not updated: {error}")


def remembered(store: Store, name: str) -> list[Path]:
    """The clan directories VM NAME was pushed into."""
    return [Path(d) for d in store.read_state(name).clans]


def remember(store: Store, name: str, directory: Path, keep: bool = True) -> None:
    """Record (KEEP) or drop DIRECTORY among the VM's clans; the caller holds its lock."""
    state = store.read_state(name)
    where = str(directory.absolute())
    others = [d for d in state.clans if not _same(d, where)]
    clans = [*others, where] if keep else others
    if clans != state.clans:
        state.clans = clans
        store.write_state(name, state)


def _same(one: str, other: str) -> bool:
    return one == other or os.path.realpath(one) == os.path.realpath(other)


def _marker(store: Store, name: str) -> Path:
    return store.unlisting / name


@contextlib.contextmanager
def leaving_clans(store: Store, name: str, explicit: Path | None, notify: Notify) -> Iterator[None]:
    """Around ``delete``: afterwards the VM is taken out of the clan named (EXPLICIT) and
    of those it remembers, if it is gone. Written ahead, so that a delete killed before it
    took the entries out is finished by the next command (``finish``)."""
    clans: list[Path] = []
    for directory in [*([explicit] if explicit else []), *remembered(store, name)]:
        if not any(_same(str(directory), str(d)) for d in clans):
            clans.append(directory.absolute())
    if clans:
        files.private_dir(store.unlisting)
        data = {"pid": os.getpid(), "clans": [str(d) for d in clans]}
        store.write(_marker(store, name), json.dumps(data).encode())
    try:
        yield
    finally:
        forget(store, name, clans, notify, explicit)


def forget(
    store: Store, name: str, directories: list[Path], notify: Notify, explicit: Path | None = None
) -> None:
    """After delete, under the VM's lock (unless the name was created again meanwhile): take
    the VM out of each clan's inventory. A clan directory that is gone is a warning, unless
    it is EXPLICIT (named on this command line, which may name any directory)."""
    with store.lock(name):
        if not store.exists(name):
            for directory in directories:
                _forget_in(name, directory, notify, explicit)
        _marker(store, name).unlink(missing_ok=True)


def _forget_in(name: str, directory: Path, notify: Notify, explicit: Path | None) -> None:
    if in_store(directory):
        return
    if not directory.is_dir():
        if explicit is None or not _same(str(directory), str(explicit.absolute())):
            notify(
                f"warning: the clan directory {directory} that '{name}' was added to is gone; "
                "no inventory to take it out of"
            )
        return
    try:
        if inventory.remove(directory, name):
            notify(f"removed '{name}' from {directory / inventory.INVENTORY_FILE}")
    except inventory.InventoryError as error:
        notify(f"warning: the clan inventory was not updated: {error}")


def finish(store: Store, notify: Notify) -> None:
    """At the start of every command: finish taking deleted VMs out of their clans, for a
    ``delete`` killed before it did (its marker, written ahead, names them)."""
    try:
        entries = os.listdir(store.unlisting)
    except FileNotFoundError:
        return
    for name in entries:
        marker = _marker(store, name)
        try:
            data = json.loads(marker.read_bytes())
            pid, clans = int(data["pid"]), [Path(d) for d in data["clans"]]
        except (OSError, ValueError, KeyError, TypeError):
            marker.unlink(missing_ok=True)  # torn: written whole or not at all, so never ours
            continue
        if pid != os.getpid() and os.path.exists(f"/proc/{pid}"):
            continue  # its delete is still at work
        if store.exists(name):  # the delete never happened
            marker.unlink(missing_ok=True)
            continue
        forget(store, name, clans, notify)
