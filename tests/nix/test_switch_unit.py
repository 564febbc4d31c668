"""What ``switch`` decides without a guest: the system a definition boots, and whether its
boot (kernel, initrd, kernel parameters) changed, so that a restart is needed."""

from __future__ import annotations

from pathlib import Path

from clan_vm_tasks.models import VMConfig
from clan_vm_tasks.nix.switch import boot_changes, system_of

OLD = "/nix/store/" + "a" * 32 + "-nixos-system-web"
NEW = "/nix/store/" + "b" * 32 + "-nixos-system-web"
REG = "/nix/store/" + "c" * 32 + "-closure-info/registration"


def vm(system: str, *, params: str = "loglevel=4", kernel: str = "", initrd: str = "") -> VMConfig:
    return VMConfig(
        name="web",
        nixos_configuration="web",
        kernel=Path(kernel or f"{system}/kernel"),
        initrd=Path(initrd or "/nix/store/" + "d" * 32 + "-initrd/initrd"),
        append=f"{params} init={system}/init regInfo={REG} console=ttyS0,115200n8",
    )


def test_the_system_is_what_init_names() -> None:
    assert system_of(vm(OLD)) == OLD
    assert system_of(VMConfig(name="web", append="console=ttyS0 init=/sbin/init")) is None
    assert system_of(VMConfig(name="web")) is None


def test_a_new_system_alone_needs_no_restart(tmp_path: Path) -> None:
    # Both systems' kernel links lead to one kernel, or to the same bytes: the same kernel.
    bzimage = tmp_path / "bzImage"
    bzimage.write_bytes(b"kernel")
    for name in ("old", "new"):
        (tmp_path / name).symlink_to(bzimage)
    old = vm(OLD, kernel=str(tmp_path / "old"))
    assert boot_changes(old, vm(NEW, kernel=str(tmp_path / "new"))) == []
    copy = tmp_path / "copy"
    copy.write_bytes(b"kernel")
    assert boot_changes(old, vm(NEW, kernel=str(copy))) == []
    other = tmp_path / "other"
    other.write_bytes(b"another kernel")
    assert boot_changes(old, vm(NEW, kernel=str(other))) == ["kernel"]


def test_the_initrd_and_the_kernel_parameters_need_a_restart() -> None:
    old = vm(OLD, kernel="/k")
    # A file that is not there (a store path gone) counts as changed.
    assert boot_changes(old, vm(NEW, kernel="/k", initrd="/other/initrd")) == ["initrd"]
    changed = vm(NEW, kernel="/k", params="loglevel=4 quiet")
    assert boot_changes(old, changed) == ["kernel parameters"]
