"""A libvirt host as a backend: where its VMs are made, found and taken away.

A VM is made on its host at ``create``: its disk volume and its domain, defined from the
definition and marked with the state directory that made it, so that two clients of one
host never take each other's domains and what a killed ``create`` left is recognised.
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from clan_vm_tasks.backends import image
from clan_vm_tasks.backends.base import AccelChoice, Removed
from clan_vm_tasks.backends.libvirt import domain, domain_xml, network, storage
from clan_vm_tasks.backends.libvirt.connection import Host, LibvirtFailure, host, lib
from clan_vm_tasks.backends.libvirt.machine import LibvirtMachine
from clan_vm_tasks.backends.ssh import display
from clan_vm_tasks.errors import ClanVMError, InvalidInput, StateConflict
from clan_vm_tasks.state.store import owner_id

if TYPE_CHECKING:
    from clan_vm_tasks.backends.netinfo import Address, Network
    from clan_vm_tasks.models import VMConfig
    from clan_vm_tasks.state.store import Store, VMPaths, VMState


CAPABILITIES_TIMEOUT = 120.0
# What only the local QEMU backend does so far, by definition field.
_UNSUPPORTED = {
    "qemu_args": "extra QEMU arguments",
    "base_image": "a base image",
    "extra_disks": "extra disks",
    "graphics": "graphics (SPICE)",
}


def _kvm_problem(host: Host) -> str | None:
    """Why KVM cannot be used on the host, from its capabilities: libvirt offers kvm
    wherever /dev/kvm exists, but without vmx/svm the guest would never boot."""
    conn = host.conn()
    # A fresh libvirtd probes QEMU first: slow, but not a host that stopped answering.
    caps = ET.fromstring(host.call(conn.getCapabilities, timeout=CAPABILITIES_TIMEOUT))
    if caps.find("guest/arch/domain[@type='kvm']") is None:
        return "libvirt offers no kvm domains there"
    features = {f.get("name") for f in caps.iterfind("host/cpu/feature")}
    if not features & {"vmx", "svm"}:
        return "its CPU has no vmx/svm flag"
    return None


class LibvirtBackend:
    """VMs on one libvirt host, reached through URI."""

    def __init__(self, name: str, uri: str) -> None:
        self.host = name  # as the user named it
        self.uri = uri
        self.address = network.address(uri)
        self.label: str | None = name if "://" not in name else display(uri)
        self._host = host(self.label, uri)
        self._accel: dict[str, AccelChoice] = {}

    def machine(self, paths: VMPaths, state: VMState) -> LibvirtMachine:
        owner = owner_id(paths.dir.parent.parent)
        return LibvirtMachine(self._host, paths.dir.name, owner, state)

    def choose_accel(self, requested: str) -> AccelChoice:
        if requested in ("tcg", "kvm"):
            return AccelChoice(requested, None)
        if "auto" not in self._accel:
            problem = _kvm_problem(self._host)
            notice = None
            if problem:
                notice = f"notice: KVM is not usable on {self._host.label} ({problem}); using TCG"
            self._accel["auto"] = AccelChoice("tcg" if problem else "kvm", notice)
        return self._accel["auto"]

    def check_config(self, config: VMConfig) -> None:
        for tag, share in sorted(config.shares.items()):
            problem = domain_xml.share_problem(share, os.path.realpath(share.source or "/"))
            if problem:
                raise InvalidInput(f"VM '{config.name}' on a libvirt host: share '{tag}' {problem}")
        network = config.network
        if network.restrict or any(f.guest_address for f in network.forward_ports):
            raise InvalidInput(
                f"VM '{config.name}' on a libvirt host cannot have a restricted network or a "
                "forward to a guest address (not supported on libvirt hosts)"
            )
        for field, what in _UNSUPPORTED.items():
            if getattr(config, field, None):
                raise InvalidInput(
                    f"VM '{config.name}' on a libvirt host cannot have {what} "
                    "(not supported on libvirt hosts)"
                )

    def check_base_image(self, path: Path) -> int:
        raise InvalidInput("base images (--from-image) are not supported on libvirt hosts yet")

    # --- making and taking away VMs on the host -------------------------------------------------

    def provision(self, config: VMConfig, paths: VMPaths, store: Store) -> None:
        """Its domain and disk volume on the host (its own share directories come at
        start); on failure what was made there is taken away again."""
        try:
            self._place(config, store.root, paths.dir)
        except StateConflict:
            raise  # refused before anything was made
        except BaseException:
            with contextlib.suppress(ClanVMError):
                self._remove(config.name, store.root, keep_disk=False)
            raise

    def _place(self, config: VMConfig, state_dir: Path, scratch: Path) -> None:
        host, name = self._host, config.name
        owner = owner_id(state_dir)
        pool = storage.pool(host)
        existing = host.domain(name)
        if existing is not None:
            # Ours and no VM of that name here: left by a create that was killed.
            domain.check_ours(host, existing, name, owner)
            domain.undefine(host, existing)
        if storage.lookup(host, pool, storage.disk_volume(name)) is not None:
            raise StateConflict(
                f"a volume {storage.disk_volume(name)} already exists in pool "
                f"'{storage.POOL}' on host {host.label} (the kept disk of a deleted VM?): "
                f"remove it there (virsh vol-delete --pool {storage.POOL} "
                f"{storage.disk_volume(name)}) or choose another name"
            )
        accel = self.choose_accel(config.accel)
        # The domain first: a killed create then leaves a domain marked as ours.
        domain.define(host, pool, config, owner, "kvm" if accel.accel == "kvm" else "qemu")
        content = None
        if config.root_filesystem is not None:
            # Made here, as for a local VM (the host needs no mkfs), and sent to the host.
            fs, content = config.root_filesystem, scratch / storage.disk_volume(name)
            image.create_formatted(content, config.disk_size, fs.type, fs.label)
        try:
            storage.create_disk(host, pool, name, config.disk_size, content)
        finally:
            if content is not None:
                content.unlink(missing_ok=True)

    def remove(self, name: str, paths: VMPaths, store: Store, *, keep_disk: bool) -> Removed:
        if store.exists(name):
            # Left by a killed command while a new VM of that name was made since: what is
            # on the host under that name is the new VM's.
            return Removed()
        return Removed(self._remove(name, store.root, keep_disk=keep_disk))

    def _remove(self, name: str, state_dir: Path, *, keep_disk: bool) -> str | None:
        host = self._host
        dom = host.domain(name)
        if dom is not None and domain.owner(host, dom) != owner_id(state_dir):
            return None  # another's domain of that name: nothing there is ours to remove
        if dom is not None:
            domain.undefine(host, dom)
        # Without our domain a disk of that name may be another's (a kept one): never removed.
        keep_disk = keep_disk or dom is None
        kept = storage.remove(host, storage.pool(host), name, keep_disk=keep_disk)
        if kept is None:
            return None
        return (
            f"volume {storage.disk_volume(name)} in pool '{storage.POOL}' on host "
            f"{host.label} ({kept})"
        )

    def guest_address(self, name: str) -> str | None:
        libvirt = lib()
        dom = self._host.domain(name)
        if dom is None or not self._host.call(dom.isActive):
            return None
        sources = ("AGENT", "ARP", "LEASE")  # the guest knows best; the host's neighbours next
        for source in sources:
            flag = getattr(libvirt, f"VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_{source}")
            try:
                found = self._host.call(dom.interfaceAddresses, flag, 0)
            except LibvirtFailure:
                continue
            for interface in found.values():
                for addr in interface.get("addrs") or []:
                    ipv4 = addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4
                    if ipv4 and not str(addr.get("addr", "")).startswith("127."):
                        return str(addr["addr"])
        return None

    def networks(self, ifname: str) -> list[tuple[Network, Address | None]]:
        """Read on the host: here when it is this machine, else over the URI's ssh."""
        from clan_vm_tasks.backends import netinfo, ssh

        where = f"{ifname} on host {self.label}"
        try:
            target = ssh.ssh_target(self.uri)
        except InvalidInput:
            raise ClanVMError(
                f"cannot tell the network of {where}: the host is not reached with ssh "
                "(use a qemu+ssh:// URI)"
            ) from None
        if target is None:  # qemu:///system: the host is this machine
            return netinfo.networks(ifname)
        printed = ssh.output(
            target, *netinfo.command(ifname), what=f"cannot read the addresses of {where}"
        )
        return netinfo.parse(printed)

    def may_run_unrecorded(self, vm_dir: str) -> bool:
        return True  # started there by someone else: only the host can tell

    def survey(self, timeout: float) -> None:
        self._host.take_survey(timeout)

    def forget_survey(self) -> None:
        self._host.survey = None
