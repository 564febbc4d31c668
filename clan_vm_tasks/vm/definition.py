"""A VM's definition as the operations use it: loaded from the store, checked against the
file system, completed with the defaults that depend on the name."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import ClanVMError, InvalidInput
from clan_vm_tasks.models import ExtraDisk, Malformed, VMConfig
from clan_vm_tasks.models import load as load_model
from clan_vm_tasks.names import mac_for
from clan_vm_tasks.render import Notify
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import machines


class Broken(ClanVMError):
    """A VM whose stored definition is unusable: the request was fine, the state is not."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(
            f"VM '{name}' is broken: {reason} (clan-vm-manager delete {name} removes it)"
        )


def load(store: Store, name: str) -> VMConfig:
    """NAME's stored definition, validated when it was written (``check``): only its shape
    is checked again, which costs a start no schema."""
    try:
        return load_model(VMConfig, store.read_config(name))
    except ClanVMError as error:
        raise Broken(name, str(error)) from None
    except Malformed as error:  # the stored file is at fault, not the request
        raise Broken(name, f"invalid definition: {error}") from None


def check(config: VMConfig, store: Store) -> VMConfig:
    """The checks a schema cannot do, before anything changes: files exist, a base image is
    safe to lay a disk over, the backend can run the definition. Paths become absolute.
    Every definition is validated here before it is written."""
    from clan_vm_tasks import schema  # only what writes a definition pays for pydantic

    config = schema.checked(config, "VM definition")
    backend = machines.backend(config.host)
    backend.check_config(config)
    updates: dict[str, Any] = {}
    for field in ("kernel", "initrd"):
        path: Path | None = getattr(config, field)
        if path is not None:
            if not path.is_file():
                raise InvalidInput(f"{field} {path} does not exist or is not a file")
            updates[field] = path.absolute()
    if config.initrd and not config.kernel:
        raise InvalidInput("--initrd needs --kernel (direct kernel boot)")
    if config.base_image is not None:
        base = config.base_image
        if not base.is_file():
            raise InvalidInput(f"base image {base} does not exist or is not a file")
        if store.root.resolve() in base.resolve().parents:
            raise InvalidInput(
                f"base image {base} is inside the state directory (a VM's disk or a kept "
                "disk); copy it elsewhere first"
            )
        updates["base_image"] = base.absolute()
        base_mib = backend.check_base_image(base)
        if config.disk_size < base_mib:
            raise InvalidInput(
                f"--disk {config.disk_size} MiB is smaller than the base image ({base_mib} MiB)"
            )
    for tag, share in sorted(config.shares.items()):
        if share.source is not None and not share.source.is_dir():
            raise InvalidInput(f"share '{tag}': {share.source} is not a directory")
        nix_store = os.environ.get("NIX_STORE_DIR", "/nix/store")
        source = str(share.source)
        if (source == nix_store or source.startswith(nix_store + "/")) and not share.read_only:
            raise InvalidInput(
                f"share '{tag}': {source} is in the Nix store, which is only ever shared "
                "read-only (readOnly = true)"
            )
    if config.network.mode == "bridge" and config.network.bridge is None:
        updates["network"] = replace(config.network, bridge="clan-br0")
    return replace(config, **updates)


def with_mac(config: VMConfig) -> VMConfig:
    """CONFIG with its MAC address: as given, else derived from the name."""
    if config.network.mac is not None:
        return config
    return replace(config, network=replace(config.network, mac=mac_for(config.name)))


def check_boot_files(config: VMConfig, name: str) -> None:
    """Before a start: the kernel and initrd recorded at create, and the shared directories,
    must still be there."""
    for field in ("kernel", "initrd"):
        path = getattr(config, field)
        if path is not None and not path.is_file():
            raise ClanVMError(f"{field} {path} of VM '{name}' no longer exists")
    for tag, share in sorted(config.shares.items()):
        if share.source is not None and not share.source.is_dir():
            raise ClanVMError(
                f"the directory {share.source} of share '{tag}' of VM '{name}' is gone"
            )


def macs(store: Store) -> dict[str, str]:
    """Every registered VM's MAC address (name -> mac)."""
    found = {}
    for other in store.names():
        try:
            network = store.read_config(other).get("network")
        except ClanVMError:
            continue
        if isinstance(network, dict) and isinstance(network.get("mac"), str):
            found[other] = network["mac"]
    return found


def check_mac(config: VMConfig, others: dict[str, str], explicit: bool) -> None:
    """Refuse a MAC that another VM (name -> mac in OTHERS) already has."""
    name, mac = config.name, config.network.mac
    for other, other_mac in others.items():
        if other != name and other_mac == mac:
            if explicit:
                raise InvalidInput(f"MAC address {mac} is already used by VM '{other}'")
            raise ClanVMError(
                f"the MAC address derived for '{name}' ({mac}) collides with VM '{other}'; "
                "choose one with --mac"
            )


def never_shrink(old: VMConfig, new: VMConfig, notify: Notify) -> VMConfig:
    """NEW with no disk smaller than OLD's: a disk keeps its size, and the user learns how to
    shrink it (there is no way without losing its data)."""
    name = new.name
    how = f"to shrink it, delete the VM and start it again: clan-vm-manager delete {name} --force"
    update: dict[str, Any] = {}
    if new.disk_size < old.disk_size:
        notify(
            f"warning: VM '{name}' keeps its {old.disk_size} MiB disk, larger than the "
            f"{new.disk_size} MiB declared, as a disk never shrinks ({how}; its data is lost)"
        )
        update["disk_size"] = old.disk_size
    disks = dict(new.extra_disks)
    for disk_name, disk in new.extra_disks.items():
        before = old.extra_disks.get(disk_name)
        if before is not None and disk.size < before.size:
            notify(
                f"warning: VM '{name}' keeps its {before.size} MiB extra disk '{disk_name}', "
                f"larger than the {disk.size} MiB declared, as a disk never shrinks ({how})"
            )
            disks[disk_name] = ExtraDisk(size=before.size)
    if disks != new.extra_disks:
        update["extra_disks"] = disks
    return replace(new, **update) if update else new
