"""The QEMU command line as a pure function of a VM definition and its paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clan_vm_tasks.models import NetworkConfig, VMConfig

QEMU_BINARY = "qemu-system-x86_64"


@dataclass(frozen=True)
class LaunchPlan:
    config: VMConfig
    accel: str  # "kvm" or "tcg", already decided
    mac: str
    disk: Path
    qmp_socket: Path
    serial_socket: Path
    console_log: Path
    pidfile: Path
    daemonize: bool = True
    tap: str | None = None  # the tap device a bridged NIC uses (made by hostnet), if any


def _escape(value: str) -> str:
    """QEMU option values escape a comma by doubling it."""
    return value.replace(",", ",,")


def network_args(network: NetworkConfig, mac: str, tap: str | None = None) -> list[str]:
    if network.mode == "none":
        return []
    tap = network.tap if network.mode == "tap" else tap
    if tap is not None:
        netdev = f"tap,id=net0,ifname={tap},script=no,downscript=no"
    elif network.mode == "bridge":  # without a tap of ours: through qemu-bridge-helper
        netdev = f"bridge,id=net0,br={network.bridge or 'clan-br0'}"
    else:  # "user", and "nat" which is the same thing: QEMU's user-mode NAT
        if any(f.host_port == "auto" for f in network.forward_ports):
            raise ValueError("auto host ports must be chosen before building the command line")
        netdev = "user,id=net0" + "".join(
            f",hostfwd={f.protocol}:127.0.0.1:{f.host_port}-:{f.guest_port}"
            for f in network.forward_ports
        )
    return ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=net0,mac={mac}"]


def build_argv(plan: LaunchPlan) -> list[str]:
    config = plan.config
    argv = [
        QEMU_BINARY,
        "-name", f"guest={config.name},process=clan-vm-{config.name}",
        "-machine", f"{config.machine},accel={plan.accel}",
        "-cpu", "host" if plan.accel == "kvm" else "max",
        "-smp", str(config.cpus),
        "-m", f"{config.memory}M",
        "-nodefaults", "-no-user-config",
        "-display", "none",
    ]  # fmt: skip
    if config.kernel:
        argv += ["-kernel", str(config.kernel)]
        if config.initrd:
            argv += ["-initrd", str(config.initrd)]
        # The hostname travels on the kernel command line for guests that want it.
        append = f"{config.append or ''} clan.hostname={config.name}".strip()
        argv += ["-append", append]
    argv += [
        "-drive", f"file={_escape(str(plan.disk))},if=none,id=disk0,format=qcow2",
        "-device", "virtio-blk-pci,drive=disk0",
    ]  # fmt: skip
    argv += network_args(config.network, plan.mac, plan.tap)
    argv += [
        "-chardev",
        f"socket,id=serial0,path={_escape(str(plan.serial_socket))},server=on,wait=off,"
        f"logfile={_escape(str(plan.console_log))},logappend=on",
        "-serial", "chardev:serial0",
        "-chardev", f"socket,id=qmp,path={_escape(str(plan.qmp_socket))},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-pidfile", str(plan.pidfile),
    ]  # fmt: skip
    if plan.daemonize:
        argv.append("-daemonize")
    argv += config.qemu_args
    return argv
