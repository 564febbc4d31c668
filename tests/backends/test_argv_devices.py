"""What a definition adds beside the root disk, on the QEMU command line (pinned): 9p shares,
extra disks, a display."""

from __future__ import annotations

from pathlib import Path

from clan_vm_tasks.backends.qemu.argv import (
    device_args,
    extra_disk_args,
    graphics_args,
    share_args,
    share_problem,
)
from clan_vm_tasks.models import VMConfig, validate
from tests.backends.test_argv import plan

VM_DIR = Path("/s/vms/web")


def config(**fields: object) -> VMConfig:
    return validate(VMConfig, {"name": "web", **fields}, "definition")


def test_shares_are_9p_exports_read_only_unless_said_otherwise() -> None:
    vm = config(
        shares={
            "nix-store": {"source": "/nix/store", "securityModel": "none"},
            "data": {"source": "/srv/a,b", "readOnly": False},
            "xchg": {},
        }
    )
    assert share_args(vm, VM_DIR) == [
        "-fsdev", "local,id=fs-data,path=/srv/a,,b,security_model=mapped-xattr",
        "-device", "virtio-9p-pci,fsdev=fs-data,mount_tag=data",
        "-fsdev", "local,id=fs-nix-store,path=/nix/store,security_model=none,readonly=on",
        "-device", "virtio-9p-pci,fsdev=fs-nix-store,mount_tag=nix-store",
        "-fsdev", "local,id=fs-xchg,path=/s/vms/web/shares/xchg,security_model=mapped-xattr,"
                  "readonly=on",
        "-device", "virtio-9p-pci,fsdev=fs-xchg,mount_tag=xchg",
    ]  # fmt: skip


def test_extra_disks_carry_their_name_as_serial() -> None:
    vm = config(extraDisks={"scratch": {"size": 64}})
    assert extra_disk_args(vm, VM_DIR) == [
        "-drive", "file=/s/vms/web/disk-scratch.qcow2,if=none,id=disk-scratch,format=qcow2",
        "-device", "virtio-blk-pci,drive=disk-scratch,serial=scratch",
    ]  # fmt: skip


def test_graphics_is_opt_in_and_served_on_a_private_socket() -> None:
    assert graphics_args(config(), Path("/run/c/spice.sock")) == []
    assert graphics_args(config(graphics=True), Path("/run/c/spice.sock")) == [
        "-device", "virtio-vga",
        "-device", "qemu-xhci,id=usb-graphics", "-device", "usb-tablet,bus=usb-graphics.0",
        "-spice", "unix=on,addr=/run/c/spice.sock,disable-ticketing=on",
    ]  # fmt: skip


def test_a_plain_definition_adds_nothing_and_the_rest_comes_before_the_extra_args() -> None:
    assert device_args(plan(config())) == []
    vm = config(graphics=True, qemuArgs=["-s"])
    argv = device_args(plan(vm))
    assert "/run/c/spice.sock" in argv[-1]  # beside the QMP socket
    from clan_vm_tasks.backends.qemu.argv import build_argv

    full = build_argv(plan(vm))
    assert full[-1] == "-s" and full.index("-spice") < full.index("-s")


def test_virtiofs_is_refused_with_what_it_needs() -> None:
    assert share_problem(config(shares={"data": {"source": "/srv"}})) is None
    problem = share_problem(config(shares={"data": {"source": "/srv", "type": "virtiofs"}}))
    assert problem is not None and "virtiofsd daemon per share" in problem
