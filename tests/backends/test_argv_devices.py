"""What a definition adds beside the root disk, on the QEMU command line (pinned): 9p and
virtiofs shares (with the virtiofsd beside QEMU), extra disks, a display."""

from __future__ import annotations

from pathlib import Path

from clan_vm_tasks.backends.qemu import virtiofs
from clan_vm_tasks.backends.qemu.argv import (
    build_argv,
    colliding,
    device_args,
    extra_disk_args,
    graphics_args,
    share_args,
)
from clan_vm_tasks.models import VMConfig
from clan_vm_tasks.schema import validate
from tests.backends.test_argv import plan

VM_DIR = Path("/s/vms/web")
RUN_DIR = Path("/run/c")


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
    assert share_args(vm, VM_DIR, RUN_DIR) == [
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


def test_extra_disks_come_in_the_natural_order_of_their_names() -> None:
    # NixOS' emptyDiskImages become empty0, empty1, ...: the guest sees them in the list's
    # order (/dev/vdb, /dev/vdc, ...), the tenth after the ninth.
    vm = config(extraDisks={f"empty{i}": {"size": 1} for i in range(12)} | {"a": {"size": 1}})
    serials = [w.rsplit("=", 1)[1] for w in extra_disk_args(vm, VM_DIR) if "serial=" in w]
    assert serials == ["a", *(f"empty{i}" for i in range(12))]


def test_graphics_is_opt_in_and_served_on_a_private_socket() -> None:
    assert graphics_args(config(), Path("/run/c/spice.sock")) == []
    assert graphics_args(config(graphics=True), Path("/run/c/spice.sock")) == [
        "-device", "virtio-vga",
        "-device", "virtio-keyboard-pci",
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


def test_virtiofs_shares_are_vhost_user_devices_on_shared_memory() -> None:
    vm = config(
        memory=512,
        shares={
            "data": {"source": "/srv/a,b", "type": "virtiofs", "readOnly": False},
            "store": {"source": "/nix/store", "type": "virtiofs"},
            "xchg": {},
        },
    )
    argv = build_argv(plan(vm))
    assert argv[argv.index("-machine") + 1] == "q35,accel=tcg,memory-backend=mem"
    assert argv[argv.index("-m") : argv.index("-m") + 4] == [
        "-m", "512M", "-object", "memory-backend-memfd,id=mem,size=512M,share=on",
    ]  # fmt: skip
    assert share_args(vm, VM_DIR, RUN_DIR) == [
        "-chardev", "socket,id=vfs-data,path=/run/c/virtiofs-data.sock",
        "-device", "vhost-user-fs-pci,chardev=vfs-data,tag=data",
        "-chardev", "socket,id=vfs-store,path=/run/c/virtiofs-store.sock",
        "-device", "vhost-user-fs-pci,chardev=vfs-store,tag=store",
        "-fsdev", "local,id=fs-xchg,path=/s/vms/web/shares/xchg,security_model=mapped-xattr,"
                  "readonly=on",
        "-device", "virtio-9p-pci,fsdev=fs-xchg,mount_tag=xchg",
    ]  # fmt: skip
    # Without a virtiofs share the memory stays QEMU's own.
    plain = build_argv(plan(config(shares={"xchg": {}})))
    assert "-object" not in plain and "memory-backend" not in plain[plain.index("-machine") + 1]
    assert colliding(["-object", "memory-backend-ram,id=mem,size=1G"]) == [
        "-object memory-backend-ram,id=mem,size=1G"
    ]


def test_virtiofsd_runs_in_a_mount_namespace_and_is_named_by_its_socket() -> None:
    sock = Path("/run/c/virtiofs-data.sock")
    argv = virtiofs.command(
        sock, 4, read_only=True, parent=77, root=True, python="/py", identity="2049:1234"
    )
    assert argv == [
        "unshare", "--mount", "--propagation", "private", "--",
        "/py", "-IS", "-c", virtiofs.SCRIPT,
        # Started in the shared directory, it bind-mounts that (read-only) onto a directory
        # of the VM's own, which is served, if it is the one checked (device:inode).
        "virtiofsd:/run/c/virtiofs-data.sock", "2049:1234",
        "/run/c/virtiofs-data.root", "ro", "77", "/usr/lib/qemu/virtiofsd", "--fd=4",
        "-o", "source=/run/c/virtiofs-data.root,sandbox=namespace,xattr",
    ]  # fmt: skip
    odd = virtiofs.command(
        Path("/run/c,d/v.sock"), 4, read_only=True, parent=77, root=True, python="/py"
    )
    assert odd[-1] == "source=/run/c\\,d/v.root,sandbox=namespace,xattr"  # commas escaped
    # Writable: bind-mounted, not made read-only; not root: a user namespace too.
    writable = virtiofs.command(sock, 4, read_only=False, parent=77, root=False, python="/py")
    assert writable[:7] == [
        "unshare", "--mount", "--propagation", "private", "--user", "--map-root-user", "--",
    ]  # fmt: skip
    assert writable[11:15] == [
        "virtiofsd:/run/c/virtiofs-data.sock", "", "/run/c/virtiofs-data.root", "",
    ]  # fmt: skip


def test_virtiofs_is_refused_only_where_virtiofsd_cannot_run_or_enforce_read_only() -> None:
    vm = config(
        shares={
            "ro": {"source": "/srv", "type": "virtiofs"},
            "rw": {"source": "/srv", "type": "virtiofs", "readOnly": False},
        }
    )
    writable = config(shares={"rw": {"source": "/srv", "type": "virtiofs", "readOnly": False}})
    assert virtiofs.problem(config(), installed=False, root=False, userns=False) is None
    assert virtiofs.problem(vm, installed=True, root=True, userns=False) is None
    assert virtiofs.problem(vm, installed=True, root=False, userns=True) is None
    missing = virtiofs.problem(vm, installed=False, root=True, userns=True)
    assert missing == (
        "share ro, rw of VM 'web' is virtiofs, which needs QEMU's /usr/lib/qemu/virtiofsd "
        '(Debian: qemu-system-common); use type = "9p" (QEMU enforces readOnly itself)'
    )
    read_only = virtiofs.problem(vm, installed=True, root=False, userns=False)
    assert read_only is not None and read_only.startswith("share ro of VM 'web' is read-only")
    assert "no read-only mode" in read_only and read_only.endswith(virtiofs.NINE_P)
    unprivileged = virtiofs.problem(writable, installed=True, root=False, userns=False)
    assert unprivileged is not None and "a mount namespace of its own" in unprivileged
    assert "\n" not in f"{missing}{read_only}{unprivileged}"
