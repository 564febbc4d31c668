"""The libvirt XML of a VM: its domain, its disk volume, its snapshots. Pure functions of
the definition, so a change here is a change users will see (``tests/backends/
test_libvirt_xml.py`` pins it, as ``test_argv`` pins the QEMU command line)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clan_vm_tasks.models import Share, VMConfig

# Marks a domain as made by clan-vm-tasks, and by which state directory.
NAMESPACE = "https://clan.lol/xmlns/clan-vm-tasks/1"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
NETDEV = "hostnet0"  # libvirt's id for the first interface's netdev (port forwards use it)
ET.register_namespace("clan", NAMESPACE)
STORE_DIR = os.environ.get("NIX_STORE_DIR", "/nix/store")
# QEMU's 9p security models as libvirt names them (libvirt has no mapped-file).
_ACCESS_MODES = {"passthrough": "passthrough", "mapped-xattr": "mapped", "none": "squash"}


@dataclass(frozen=True)
class DomainPlan:
    """Everything the domain needs besides the definition: names and paths on the host."""

    config: VMConfig
    domain_type: str  # "kvm" or "qemu" (TCG)
    mac: str
    pool: str
    disk_volume: str
    kernel: str | None  # paths on the host (volumes of the pool)
    initrd: str | None
    console_log: str
    owner: str  # the state directory that made it
    uuid: str | None = None  # the domain's, when it is defined again
    share_dirs: dict[str, str] = field(default_factory=dict)  # the VM's own, by tag


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _interface(devices: ET.Element, config: VMConfig, mac: str) -> None:
    network = config.network
    if network.mode == "none":
        return
    if network.mode == "bridge":
        iface = _sub(devices, "interface", type="bridge")
        _sub(iface, "source", bridge=network.bridge or "clan-br0")
    elif network.mode == "tap":
        iface = _sub(devices, "interface", type="ethernet")
        _sub(iface, "target", dev=network.tap or "", managed="no")
    else:  # user-mode NAT; forwards are added once QEMU runs (see ``network``)
        iface = _sub(devices, "interface", type="user")
    _sub(iface, "mac", address=mac)
    _sub(iface, "model", type="virtio")


def share_problem(share: Share, resolved: str) -> str | None:
    """Why SHARE (whose source leads to RESOLVED on this machine) cannot be given to a VM on
    a libvirt host, or None. A directory of this machine is not there: only the VM's own
    directories (made on the host), store paths (Nix copies them) and the host's store
    itself (read-only, as NixOS VMs share it) can be."""
    if share.source is not None:
        source = str(share.source)
        in_store = [
            p for p in (source, resolved) if p == STORE_DIR or p.startswith(STORE_DIR + "/")
        ]
        if len(in_store) != 2:
            return "shares a directory of this machine: only store paths can be shared there"
        if not share.read_only:
            return "must be read-only (a store path)"
    if share.type != "9p":
        return 'is virtiofs: use type = "9p"'
    if share.security_model not in _ACCESS_MODES:
        return f"has security model {share.security_model}, which libvirt does not offer"
    return None


def _filesystems(devices: ET.Element, config: VMConfig, share_dirs: dict[str, str]) -> None:
    for tag, share in sorted(config.shares.items()):
        mode = _ACCESS_MODES[share.security_model]
        filesystem = _sub(devices, "filesystem", type="mount", accessmode=mode)
        _sub(filesystem, "source", dir=str(share.source or share_dirs[tag]))
        _sub(filesystem, "target", dir=tag)  # the mount tag
        if share.read_only:
            _sub(filesystem, "readonly")


def domain_xml(plan: DomainPlan) -> str:
    config = plan.config
    domain = ET.Element("domain", type=plan.domain_type)
    _sub(domain, "name", config.name)
    if plan.uuid is not None:
        _sub(domain, "uuid", plan.uuid)
    _sub(domain, "description", "a VM of clan-vm-tasks")
    metadata = _sub(domain, "metadata")
    mark = _sub(metadata, f"{{{NAMESPACE}}}vm")
    _sub(mark, f"{{{NAMESPACE}}}owner", plan.owner)
    _sub(domain, "memory", str(config.memory), unit="MiB")
    _sub(domain, "vcpu", str(config.cpus))
    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine=config.machine)
    if plan.kernel is not None:
        _sub(os_, "kernel", plan.kernel)
        if plan.initrd is not None:
            _sub(os_, "initrd", plan.initrd)
        # The hostname travels on the kernel command line, as with the QEMU backend.
        _sub(os_, "cmdline", f"{config.append or ''} clan.hostname={config.name}".strip())
    features = _sub(domain, "features")
    _sub(features, "acpi")  # the power button of the stop ladder
    # TCG gets every CPU feature QEMU can emulate (-cpu max), KVM the host's CPU.
    _sub(domain, "cpu", mode="host-passthrough" if plan.domain_type == "kvm" else "maximum")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    disk = _sub(devices, "disk", type="volume", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2")
    _sub(disk, "source", pool=plan.pool, volume=plan.disk_volume)
    _sub(disk, "target", dev="vda", bus="virtio")
    from clan_vm_tasks.models import ROOT_SERIAL  # loaded with the definition anyway

    _sub(disk, "serial", ROOT_SERIAL)  # /dev/disk/by-id/virtio-root, as with the QEMU backend
    _filesystems(devices, config, plan.share_dirs)
    _interface(devices, config, plan.mac)
    serial = _sub(devices, "serial", type="pty")
    # On the host, beside the disk: readable through the pool from anywhere.
    _sub(serial, "log", file=plan.console_log, append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    if config.agent:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name=AGENT_CHANNEL)
    _sub(devices, "memballoon", model="none")
    rng = _sub(devices, "rng", model="virtio")  # as the QEMU backend (and qemu-vm.nix) give
    _sub(rng, "backend", "/dev/urandom", model="random")
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def volume_xml(name: str, capacity: int, fmt: str) -> str:
    """A volume of CAPACITY bytes in format FMT (qcow2 for disks, raw for boot files)."""
    volume = ET.Element("volume")
    _sub(volume, "name", name)
    _sub(volume, "capacity", str(capacity), unit="bytes")
    target = _sub(volume, "target")
    _sub(target, "format", type=fmt)
    if fmt == "qcow2":
        # libvirt makes version 2 images by default, which cannot grow once they have snapshots.
        _sub(target, "compat", "1.1")
    return ET.tostring(volume, encoding="unicode")


def directory_volume_xml(name: str) -> str:
    """A directory volume (a VM's own shared directory on its host)."""
    volume = ET.Element("volume", type="dir")
    _sub(volume, "name", name)
    _sub(volume, "capacity", "0", unit="bytes")
    target = _sub(volume, "target")
    _sub(target, "format", type="dir")
    permissions = _sub(target, "permissions")
    _sub(permissions, "mode", "0755")
    return ET.tostring(volume, encoding="unicode")


def snapshot_xml(name: str) -> str:
    """An internal snapshot: with memory of a running domain, of the disk of a stopped one."""
    snapshot = ET.Element("domainsnapshot")
    _sub(snapshot, "name", name)
    return ET.tostring(snapshot, encoding="unicode")


def owner(domain_xml_text: str) -> str | None:
    """The state directory that made a domain (None: not made by clan-vm-tasks)."""
    try:
        root = ET.fromstring(domain_xml_text)
    except ET.ParseError:
        return None
    return root.findtext(f"metadata/{{{NAMESPACE}}}vm/{{{NAMESPACE}}}owner")


def disk_volume(domain_xml_text: str) -> tuple[str, str] | None:
    """(pool, volume) of a domain's first disk."""
    try:
        source = ET.fromstring(domain_xml_text).find("devices/disk/source")
    except ET.ParseError:
        return None
    if source is None or "volume" not in source.attrib:
        return None
    return source.get("pool", ""), source.get("volume", "")


def snapshot_facts(snapshot_xml_text: str) -> tuple[int, bool, int]:
    """(creation time, memory saved, the guest's memory in bytes) of a snapshot."""
    root = ET.fromstring(snapshot_xml_text)
    created = int(root.findtext("creationTime") or 0)
    memory = root.find("memory")
    with_memory = root.findtext("state") in ("running", "paused") or (
        memory is not None and memory.get("snapshot") == "internal"
    )
    ram = root.find("domain/memory")
    size = 0
    if ram is not None and ram.text:
        unit = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "bytes": 1, "b": 1}
        size = int(ram.text) * unit.get(ram.get("unit", "KiB"), 1 << 10)
    return created, with_memory, size
