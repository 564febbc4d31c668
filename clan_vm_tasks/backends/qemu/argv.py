"""The QEMU command line as a pure function of a VM definition and its paths."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from clan_vm_tasks.backends.base import DATA_PORT
from clan_vm_tasks.backends.qemu import virtiofs
from clan_vm_tasks.models import ROOT_SERIAL, NetworkConfig, VMConfig, disk_order
from clan_vm_tasks.state.store import VMPaths

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
    "-chardev": {"serial0", "qmp", "events", "agent0"},
    "-device": {"agent-serial", "rng0"},
    "-object": {"mem"},  # the shared memory of a VM with virtiofs shares
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
    agent_pipe: Path  # the guest agent's FIFOs, without .in/.out (used if config.agent)
    data_socket: Path  # the data port's (used if config.agent)
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
            f",hostfwd={f.protocol}:127.0.0.1:{f.host_port}-{f.guest_address or ''}:{f.guest_port}"
            for f in network.forward_ports
        )
        netdev += ",restrict=on" if network.restrict else ""
    return ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=net0,mac={mac}"]


AGENT_PORT = "org.qemu.guest_agent.0"  # the name qemu-ga and its udev rules look for


def agent_args(pipe: Path, data: Path) -> list[str]:
    """A virtio-serial port for the QEMU guest agent, relayed through the FIFOs PIPE.in and
    PIPE.out (made before QEMU starts; QEMU holds them open, so the guest's agent always
    sees a host attached), and beside it the data port, served on the socket DATA."""
    return [
        "-device", "virtio-serial-pci,id=agent-serial",
        "-chardev", f"pipe,id=agent0,path={_escape(str(pipe))}",
        "-device", f"virtserialport,bus=agent-serial.0,chardev=agent0,name={AGENT_PORT}",
        "-chardev", f"socket,id=data0,path={_escape(str(data))},server=on,wait=off",
        "-device", f"virtserialport,bus=agent-serial.0,chardev=data0,name={DATA_PORT}",
    ]  # fmt: skip


def share_args(config: VMConfig, vm_dir: Path, run_dir: Path) -> list[str]:
    """A 9p export or a virtiofs device per share (the mount tag is its name); a share
    without a source exports the VM's own directory for it. A virtiofs share is served by
    its virtiofsd on a socket in RUN_DIR (``virtiofs``), which enforces read-only."""
    argv = []
    for tag, share in sorted(config.shares.items()):
        if share.type == "virtiofs":
            sock = _escape(str(virtiofs.socket_path(run_dir, tag)))
            argv += [
                "-chardev", f"socket,id=vfs-{tag},path={sock}",
                "-device", f"vhost-user-fs-pci,chardev=vfs-{tag},tag={tag}",
            ]  # fmt: skip
            continue
        source = share.source or VMPaths(vm_dir).share_dir(tag)
        fsdev = (
            f"local,id=fs-{tag},path={_escape(str(source))},security_model={share.security_model}"
        )
        argv += [
            "-fsdev", fsdev + (",readonly=on" if share.read_only else ""),
            "-device", f"virtio-9p-pci,fsdev=fs-{tag},mount_tag={tag}",
        ]  # fmt: skip
    return argv


def extra_disk_args(config: VMConfig, vm_dir: Path) -> list[str]:
    """Each extra disk on virtio-blk, in the natural order of their names (the guest's
    /dev/vdb, /dev/vdc, ...); its name is the serial (/dev/disk/by-id/virtio-NAME)."""
    argv = []
    for name in sorted(config.extra_disks, key=disk_order):
        path = VMPaths(vm_dir).extra_disk(name)
        argv += [
            "-drive", f"file={_escape(str(path))},if=none,id=disk-{name},format=qcow2",
            "-device", f"virtio-blk-pci,drive=disk-{name},serial={name}",
        ]  # fmt: skip
    return argv


def graphics_args(config: VMConfig, spice_socket: Path) -> list[str]:
    """A display for a VM with graphics: virtio-vga, a keyboard and a tablet, served over
    SPICE on a socket only its user can open (remote-viewer spice+unix://SOCKET)."""
    if not config.graphics:
        return []
    return [
        "-device", "virtio-vga",
        "-device", "virtio-keyboard-pci",
        "-device", "qemu-xhci,id=usb-graphics", "-device", "usb-tablet,bus=usb-graphics.0",
        "-spice", f"unix=on,addr={_escape(str(spice_socket))},disable-ticketing=on",
    ]  # fmt: skip


def device_args(plan: LaunchPlan) -> list[str]:
    """Shares, extra disks and the display: what a definition adds beside its root disk."""
    vm_dir = plan.disk.parent
    return (
        share_args(plan.config, vm_dir, plan.qmp_socket.parent)
        + extra_disk_args(plan.config, vm_dir)
        + graphics_args(plan.config, plan.qmp_socket.with_name("spice.sock"))
    )


def build_argv(plan: LaunchPlan) -> list[str]:
    config = plan.config
    # virtiofsd maps the guest's memory: with a virtiofs share it is a shared memfd.
    shared = any(share.type == "virtiofs" for share in config.shares.values())
    machine, memory = f"{config.machine},accel={plan.accel}", f"{config.memory}M"
    argv = [
        QEMU_BINARY,
        "-name", f"guest={config.name},process=clan-vm-{config.name}",
        "-machine", machine + (",memory-backend=mem" if shared else ""),
        "-cpu", "host" if plan.accel == "kvm" else "max",
        "-smp", str(config.cpus),
        "-m", memory,
    ]  # fmt: skip
    if shared:
        argv += ["-object", f"memory-backend-memfd,id=mem,size={memory},share=on"]
    argv += ["-nodefaults", "-no-user-config", "-display", "none"]
    if config.kernel:
        argv += ["-kernel", str(config.kernel)]
        if config.initrd:
            argv += ["-initrd", str(config.initrd)]
        # The hostname travels on the kernel command line for guests that want it.
        append = f"{config.append or ''} clan.hostname={config.name}".strip()
        argv += ["-append", append]
    # The root disk as qemu-vm.nix gives it (/dev/disk/by-id/virtio-root), and, as
    # qemu-vm.nix, a hardware random number generator.
    argv += [
        "-drive", f"file={_escape(str(plan.disk))},if=none,id=disk0,format=qcow2",
        "-device", f"virtio-blk-pci,drive=disk0,serial={ROOT_SERIAL},bootindex=1",
        "-device", "virtio-rng-pci,id=rng0",
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
    argv += device_args(plan)
    if config.agent:
        argv += agent_args(plan.agent_pipe, plan.data_socket)
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
                elif part.startswith("hostfwd="):  # hostfwd=tcp:127.0.0.1:HOST-[ADDRESS]:GUEST
                    here, _, there = part[8:].partition("-")
                    proto, _, host = here.split(":")
                    address, _, guest = there.partition(":")
                    guest = f"{address}:{guest}" if address else guest
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
