"""A VM's domain on its host: defined from the VM's definition, marked with the state
directory that made it, and what its state says."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clan_vm_tasks.backends.base import Ending
from clan_vm_tasks.backends.libvirt import domain_xml, storage
from clan_vm_tasks.backends.libvirt.connection import Host, lib
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.names import mac_for

if TYPE_CHECKING:
    from clan_vm_tasks.models import VMConfig

# virDomainState: running, blocked, paused, being shut down, pm-suspended all hold a QEMU.
ACTIVE_STATES = (1, 2, 3, 4, 7)
PAUSED = 3
_ENDINGS = {  # virDomainShutoffReason -> how the VM ended
    1: Ending("poweroff", "guest-poweroff", "the guest powered itself off"),
    2: Ending("crash", None, "the domain was destroyed on its host, not by this tool"),
    3: Ending("crash", None, "QEMU crashed on its host"),
    6: Ending("crash", None, "QEMU failed on its host"),
    8: Ending("crash", None, "libvirtd ended it on its host"),
}


def owner(host: Host, dom: Any) -> str | None:
    return domain_xml.owner(host.call(dom.XMLDesc, lib().VIR_DOMAIN_XML_INACTIVE))


def check_ours(host: Host, dom: Any, name: str, wanted: str) -> None:
    found = owner(host, dom)
    if found != wanted:
        whose = f"made by {found}" if found else "not made by clan-vm-tasks"
        raise ClanVMError(
            f"the domain '{name}' on host {host.label} is not this VM's ({whose}); "
            "rename one of them"
        )


def ending(state: tuple[int, int] | None, where: str) -> Ending:
    if state is None:
        return Ending("crash", None, f"its domain was undefined on {where}, not by this tool")
    if state[0] == 6:
        return Ending("crash", None, f"the guest crashed on {where}")
    found = _ENDINGS.get(state[1])
    if found is None:
        return Ending("crash", None, f"it ended on {where} (libvirt shutoff reason {state[1]})")
    return Ending(found.action, found.step, found.details.replace("its host", where))


def define(
    host: Host, pool: Any, config: VMConfig, owner: str, domain_type: str, existing: Any = None
) -> Any:
    """Define the domain from CONFIG (again, keeping its UUID, when EXISTING), with its boot
    files uploaded and its own shared directories made."""
    libvirt = lib()
    directory = storage.pool_path(host, pool)
    kernel = initrd = None
    if config.kernel is not None:
        kernel = storage.boot_file(host, pool, config.name, "kernel", config.kernel)
        if config.initrd is not None:
            initrd = storage.boot_file(host, pool, config.name, "initrd", config.initrd)
    share_dirs = {
        tag: storage.share_dir(host, pool, config.name, tag)
        for tag, share in sorted(config.shares.items())
        if share.source is None
    }
    plan = domain_xml.DomainPlan(
        config=config,
        domain_type=domain_type,
        mac=config.network.mac or mac_for(config.name),
        pool=storage.POOL,
        disk_volume=storage.disk_volume(config.name),
        kernel=kernel,
        initrd=initrd,
        console_log=f"{directory}/{storage.console_volume(config.name)}",
        owner=owner,
        uuid=None if existing is None else str(host.call(existing.UUIDString)),
        share_dirs=share_dirs,
    )
    conn = host.conn()
    flags = libvirt.VIR_DOMAIN_DEFINE_VALIDATE
    return host.call(conn.defineXMLFlags, domain_xml.domain_xml(plan), flags)


def domain_type(host: Host, dom: Any) -> str:
    """ "kvm" or "tcg", as the domain is defined."""
    text = host.call(dom.XMLDesc, 0)
    return "kvm" if "<domain type='kvm'" in text else "tcg"


def undefine(host: Host, dom: Any) -> None:
    libvirt = lib()
    if host.call(dom.isActive):
        host.call(dom.destroy)
    flags = (
        libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    )
    host.call(dom.undefineFlags, flags)
