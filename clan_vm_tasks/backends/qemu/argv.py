"""The QEMU command line as a pure function of a VM definition and its paths."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from clan_vm_tasks.models import NetworkConfig, VMConfig

QEMU_BINARY = "qemu-system-x86_64"
# Options the tool sets itself (or whose effect it must know): an extra argument may not
# set them again. QEMU takes "--opt" for "-opt".
OWN_OPTIONS = frozenset(
    [
        "-name",
        "-machine",
        "-M",
        "-accel",
        "-enable-kvm",
        "-smp",
        "-m",
        "-kernel",
        "-initrd",
        "-append",
        "-nodefaults",
        "-no-user-config",
        "-pidfile",
        "-daemonize",
        "-qmp",
        "-qmp-pretty",
        "-mon",
        "-monitor",
        "-serial",
        "-readconfig",
        "-runas",
        "-chroot",
    ]
)
# The ids of what the tool's command line defines, per option.
OWN_IDS = {
    "-chardev": {"serial0", "qmp", "events"},
    "-netdev": {"net0"},
    "-drive": {"disk0"},
}


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
    events: Path  # QEMU's event log: EVENTS.in holds our request, EVENTS.out gets the events
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
        "-chardev", f"pipe,id=events,path={_escape(str(plan.events))}",
        "-mon", "chardev=events,mode=control",
        "-pidfile", str(plan.pidfile),
    ]  # fmt: skip
    if plan.daemonize:
        argv.append("-daemonize")
    argv += config.qemu_args
    return argv


def describe(argv: list[str]) -> tuple[str, str | None, list[str]]:
    """What a command line built here says of its VM: accelerator, tap, forwards (to take
    a running QEMU back into the record)."""
    accel, tap, forwards = "tcg", None, []
    for option, value in itertools.pairwise(argv):
        if option == "-machine":
            accel = next((p[6:] for p in value.split(",") if p.startswith("accel=")), accel)
        elif option == "-netdev":
            for part in value.split(","):
                if part.startswith("ifname="):
                    tap = part[7:]
                elif part.startswith("hostfwd="):  # hostfwd=tcp:127.0.0.1:HOST-:GUEST
                    proto, _, host, guest = part[8:].replace("-:", ":").split(":")
                    forwards.append(f"{proto}:127.0.0.1:{host}->{guest}")
    return accel, tap, forwards


def colliding(extra: list[str]) -> list[str]:
    """The extra arguments that would override or clash with the tool's own."""
    found = []
    for i, arg in enumerate(extra):
        if not arg.startswith("-"):
            continue
        option = "-" + arg.lstrip("-")
        value = extra[i + 1] if i + 1 < len(extra) else ""
        ids = {part[3:] for part in value.split(",") if part.startswith("id=")}
        if option in OWN_OPTIONS:
            found.append(arg)
        elif ids & OWN_IDS.get(option, set()):
            found.append(f"{arg} {value}")
    return found
