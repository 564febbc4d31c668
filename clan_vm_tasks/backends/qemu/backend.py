"""The local QEMU backend: VMs as QEMU processes on this machine, their disks qcow2 files
in the VM's directory of the state directory. Imported by every ``list``: what it needs
beyond that is imported when used."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from clan_vm_tasks.errors import InvalidInput

if TYPE_CHECKING:
    from clan_vm_tasks.backends.base import AccelChoice, Removed
    from clan_vm_tasks.backends.netinfo import Address, Network
    from clan_vm_tasks.backends.qemu.machine import QemuMachine
    from clan_vm_tasks.models import VMConfig
    from clan_vm_tasks.state.store import Store, VMPaths, VMState


class QemuBackend:
    """QEMU processes on this machine, disks as qcow2 files in the state directory."""

    label: str | None = None  # this machine
    address: str = "127.0.0.1"  # forwarded ports bind here

    def machine(self, paths: VMPaths, state: VMState) -> QemuMachine:
        # Lazy: ``list`` of stopped VMs never needs one.
        from clan_vm_tasks.backends.qemu.machine import QemuMachine

        return QemuMachine(paths, state)

    def choose_accel(self, requested: str) -> AccelChoice:
        from clan_vm_tasks.backends.qemu import accel

        return accel.choose(requested)

    def check_config(self, config: VMConfig) -> None:
        from clan_vm_tasks.backends.qemu.argv import colliding
        from clan_vm_tasks.backends.qemu.virtiofs import share_problem

        problem = share_problem(config)
        if problem:
            raise InvalidInput(problem)
        clashes = colliding(config.qemu_args)
        if clashes:
            raise InvalidInput(
                f"extra QEMU arguments of VM '{config.name}' would override the tool's own: "
                + ", ".join(clashes)
            )

    def check_base_image(self, path: Path) -> int:
        from clan_vm_tasks.backends import image

        return image.mib_ceil(image.inspect_base(path).size)

    def provision(self, config: VMConfig, paths: VMPaths, store: Store) -> None:
        from clan_vm_tasks.backends.qemu import provision

        provision.provision(config, paths)

    def remove(self, name: str, paths: VMPaths, store: Store, *, keep_disk: bool) -> Removed:
        """The disks go (or are kept) with the renamed directory; a crash of the VM may
        have left a tap or sockets, which ``Machine.release`` took before."""
        from clan_vm_tasks.backends.base import Removed
        from clan_vm_tasks.backends.qemu import provision

        return provision.keep(name, paths, store) if keep_disk else Removed()

    def may_run_unrecorded(self, vm_dir: str) -> bool:
        # QEMU removes its pidfile on every orderly exit: without one, no QEMU of the VM runs.
        return os.path.exists(f"{vm_dir}/qemu.pid")

    def guest_address(self, name: str) -> str | None:
        return None  # this machine has no view of a guest's address: its agent has

    def networks(self, ifname: str) -> list[tuple[Network, Address | None]]:
        from clan_vm_tasks.backends import netinfo

        return netinfo.networks(ifname)

    def survey(self, timeout: float) -> None:
        pass  # each VM's process is looked at on its own (cheap: /proc)

    def forget_survey(self) -> None:
        pass
