"""A VM's definition as the operations use it: loaded from the store, checked against the
file system, completed with the defaults that depend on the name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import ClanVMError, InvalidInput
from clan_vm_tasks.models import VMConfig, validate
from clan_vm_tasks.names import mac_for
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import machines


def load(store: Store, name: str) -> VMConfig:
    return validate(VMConfig, store.read_config(name), f"definition of VM '{name}'")


def check_files(config: VMConfig) -> VMConfig:
    """Existence checks that the schema cannot do; paths become absolute."""
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
        if not config.base_image.is_file():
            raise InvalidInput(f"base image {config.base_image} does not exist or is not a file")
        updates["base_image"] = config.base_image.absolute()
        base_mib = machines.backend().image_size_mib(config.base_image)
        if config.disk_size < base_mib:
            raise InvalidInput(
                f"--disk {config.disk_size} MiB is smaller than the base image ({base_mib} MiB)"
            )
    if config.network.mode == "bridge" and config.network.bridge is None:
        updates["network"] = config.network.model_copy(update={"bridge": "clan-br0"})
    return config.model_copy(update=updates)


def with_mac(config: VMConfig) -> VMConfig:
    """CONFIG with its MAC address: as given, else derived from the name."""
    if config.network.mac is not None:
        return config
    network = config.network.model_copy(update={"mac": mac_for(config.name)})
    return config.model_copy(update={"network": network})


def check_boot_files(config: VMConfig, name: str) -> None:
    """Before a start: the kernel and initrd recorded at create must still be there."""
    for field in ("kernel", "initrd"):
        path = getattr(config, field)
        if path is not None and not path.is_file():
            raise ClanVMError(f"{field} {path} of VM '{name}' no longer exists")


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
