"""The generated QEMU command line, pinned: a change here is a change users will see."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clan_vm_tasks.backends.qemu.argv import LaunchPlan, build_argv, colliding, describe
from clan_vm_tasks.models import NetworkConfig, PortForward, VMConfig


def plan(config: VMConfig, accel: str = "tcg", daemonize: bool = True) -> LaunchPlan:
    return LaunchPlan(
        config=config,
        accel=accel,
        mac="02:00:00:00:00:01",
        disk=Path("/s/vms/web/disk.qcow2"),
        qmp_socket=Path("/run/c/qmp.sock"),
        serial_socket=Path("/run/c/serial.sock"),
        console_log=Path("/s/vms/web/console.log"),
        pidfile=Path("/s/vms/web/qemu.pid"),
        events=Path("/s/vms/web/events"),
        agent_pipe=Path("/run/c/agent"),
        data_socket=Path("/run/c/data.sock"),
        daemonize=daemonize,
    )


def test_direct_kernel_boot_with_user_networking() -> None:
    config = VMConfig(
        name="web",
        cpus=2,
        memory=512,
        kernel=Path("/k/bzImage"),
        initrd=Path("/k/initrd"),
        append="console=ttyS0",
        network=NetworkConfig(forward_ports=[PortForward(host_port=2222, guest_port=22)]),
    )
    assert build_argv(plan(config)) == [
        "qemu-system-x86_64",
        "-name", "guest=web,process=clan-vm-web",
        "-machine", "q35,accel=tcg",
        "-cpu", "max",
        "-smp", "2",
        "-m", "512M",
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-kernel", "/k/bzImage",
        "-initrd", "/k/initrd",
        "-append", "console=ttyS0 clan.hostname=web",
        "-drive", "file=/s/vms/web/disk.qcow2,if=none,id=disk0,format=qcow2",
        "-device", "virtio-blk-pci,drive=disk0,serial=root,bootindex=1",
        "-device", "virtio-rng-pci,id=rng0",
        "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22",
        "-device", "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01",
        "-chardev", "socket,id=serial0,path=/run/c/serial.sock,server=on,wait=off,"
                    "logfile=/s/vms/web/console.log,logappend=on",
        "-serial", "chardev:serial0",
        "-chardev", "socket,id=qmp,path=/run/c/qmp.sock,server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", "pipe,id=events,path=/s/vms/web/events",
        "-mon", "chardev=events,mode=control",
        "-pidfile", "/s/vms/web/qemu.pid",
        "-device", "virtio-serial-pci,id=agent-serial",
        "-chardev", "pipe,id=agent0,path=/run/c/agent",
        "-device", "virtserialport,bus=agent-serial.0,chardev=agent0,name=org.qemu.guest_agent.0",
        "-chardev", "socket,id=data0,path=/run/c/data.sock,server=on,wait=off",
        "-device", "virtserialport,bus=agent-serial.0,chardev=data0,name=org.clan.vm.data",
        "-daemonize",
    ]  # fmt: skip

    no_agent = build_argv(plan(dataclasses.replace(config, agent=False)))
    assert "virtio-serial-pci,id=agent-serial" not in no_agent
    assert not any("agent0" in arg or "data0" in arg for arg in no_agent)


def test_kvm_uses_the_host_cpu() -> None:
    argv = build_argv(plan(VMConfig(name="web"), accel="kvm"))
    assert argv[argv.index("-machine") + 1] == "q35,accel=kvm"
    assert argv[argv.index("-cpu") + 1] == "host"


def test_no_kernel_means_no_direct_boot_and_foreground_means_no_daemonize() -> None:
    argv = build_argv(plan(VMConfig(name="web"), daemonize=False))
    assert "-kernel" not in argv and "-append" not in argv and "-daemonize" not in argv


def test_forwarded_ports_are_bound_to_loopback_only() -> None:
    forwards = [
        PortForward(host_port=8080, guest_port=80),
        PortForward(protocol="udp", host_port=5353, guest_port=53),
    ]
    argv = build_argv(
        plan(VMConfig(name="web", network=NetworkConfig(mode="nat", forward_ports=forwards)))
    )
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53"


def test_bridge_and_none_networking() -> None:
    bridged = build_argv(
        plan(VMConfig(name="web", network=NetworkConfig(mode="bridge", bridge="br7")))
    )
    assert bridged[bridged.index("-netdev") + 1] == "bridge,id=net0,br=br7"
    assert "-netdev" not in build_argv(
        plan(VMConfig(name="web", network=NetworkConfig(mode="none")))
    )


def test_extra_arguments_come_last_and_commas_in_paths_are_escaped() -> None:
    config = VMConfig(name="web", qemu_args=["-device", "virtio-rng-pci"])
    p = plan(config)
    p = LaunchPlan(**{**p.__dict__, "disk": Path("/s/odd,name/disk.qcow2")})
    argv = build_argv(p)
    assert argv[-2:] == ["-device", "virtio-rng-pci"]
    assert "file=/s/odd,,name/disk.qcow2,if=none,id=disk0,format=qcow2" in argv


def test_tap_networking_for_a_given_tap_and_for_a_bridge_through_our_tap() -> None:
    tapped = build_argv(plan(VMConfig(name="web", network=NetworkConfig(mode="tap", tap="tap7"))))
    assert tapped[tapped.index("-netdev") + 1] == "tap,id=net0,ifname=tap7,script=no,downscript=no"
    bridged = plan(VMConfig(name="web", network=NetworkConfig(mode="bridge", bridge="br7")))
    argv = build_argv(LaunchPlan(**{**bridged.__dict__, "tap": "cvm0123"}))
    assert argv[argv.index("-netdev") + 1] == "tap,id=net0,ifname=cvm0123,script=no,downscript=no"


def test_auto_ports_must_be_resolved_before_the_command_line() -> None:
    forwards = [PortForward(host_port="auto", guest_port=80)]
    config = VMConfig(name="web", network=NetworkConfig(forward_ports=forwards))
    with pytest.raises(ValueError):
        build_argv(plan(config))


def test_a_command_line_describes_the_vm_it_runs() -> None:
    """What lets a QEMU whose record was lost be taken back: accel, tap, forwards."""
    config = VMConfig(
        name="web",
        network=NetworkConfig(
            forward_ports=[
                PortForward(host_port=2222, guest_port=22),
                PortForward(protocol="udp", host_port=5353, guest_port=53),
            ]
        ),
    )
    assert describe(build_argv(plan(config))) == (
        "tcg",
        None,
        ["tcp:127.0.0.1:2222->22", "udp:127.0.0.1:5353->53"],
    )
    bridged = VMConfig(name="web", network=NetworkConfig(mode="bridge", bridge="br0"))
    tapped = LaunchPlan(**{**plan(bridged, accel="kvm").__dict__, "tap": "cvm0123"})
    assert describe(build_argv(tapped)) == ("kvm", "cvm0123", [])


@pytest.mark.parametrize(
    ("extra", "clash"),
    [
        (["-pidfile", "/tmp/x"], "-pidfile"),
        (["--daemonize"], "--daemonize"),
        (["-qmp", "tcp:0:4444"], "-qmp"),
        (["-monitor", "stdio"], "-monitor"),
        (["-serial", "file:/etc/x"], "-serial"),
        (["-name", "evil"], "-name"),
        (["-chardev", "file,id=qmp,path=/tmp/x"], "-chardev file,id=qmp,path=/tmp/x"),
        (["-netdev", "user,id=net0"], "-netdev user,id=net0"),
        (["-drive", "file=/etc/shadow,id=disk0"], "-drive file=/etc/shadow,id=disk0"),
        (["-m", "64G"], "-m"),
    ],
)
def test_extra_arguments_that_clash_with_the_tools_own_are_found(
    extra: list[str], clash: str
) -> None:
    assert colliding(["-device", "virtio-rng-pci", *extra]) == [clash]


def test_forwards_to_a_guest_address_and_a_restricted_network() -> None:
    network = NetworkConfig(
        restrict=True,
        forward_ports=[
            PortForward(host_port=8080, guest_port=80, guest_address="10.0.2.10"),
            PortForward(protocol="udp", host_port=5353, guest_port=53),
        ],
    )
    argv = build_argv(plan(VMConfig(name="web", network=network)))
    assert argv[argv.index("-netdev") + 1] == (
        "user,id=net0,hostfwd=tcp:127.0.0.1:8080-10.0.2.10:80,hostfwd=udp:127.0.0.1:5353-:53,"
        "restrict=on"
    )
    # ... and the running VM is described as it was asked for.
    assert describe(argv)[2] == ["tcp:127.0.0.1:8080->10.0.2.10:80", "udp:127.0.0.1:5353->53"]
    assert [str(f) for f in network.forward_ports] == describe(argv)[2]


def test_a_restricted_network_or_a_guest_address_need_what_they_mean() -> None:
    from clan_vm_tasks.errors import InvalidInput
    from clan_vm_tasks.schema import validate

    with pytest.raises(InvalidInput, match="restrict needs user-mode networking"):
        validate(VMConfig, {"name": "a", "network": {"mode": "none", "restrict": True}}, "VM")
    forward = {"hostPort": 1, "guestPort": 2, "guestAddress": "10.0.2"}
    with pytest.raises(InvalidInput, match=r"'10\.0\.2' is not an IPv4 address"):
        validate(PortForward, forward, "forward")
    with pytest.raises(InvalidInput, match="the root disk's serial"):
        validate(VMConfig, {"name": "a", "extraDisks": {"root": {"size": 1}}}, "VM")


def test_extra_arguments_of_their_own_pass() -> None:
    assert colliding(["-device", "virtio-rng-pci", "-chardev", "null,id=mine", "-no-reboot"]) == []
