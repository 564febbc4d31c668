"""Is KVM usable? ``/dev/kvm`` existing is not proof: probe it without risking a hang."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from clan_vm_tasks.backends.base import AccelChoice

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_API_VERSION = 12


def _cpu_has_virtualisation(cpuinfo: Path) -> bool:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return "vmx" in flags or "svm" in flags
    return False


def kvm_problem(
    device: Path = Path("/dev/kvm"), cpuinfo: Path = Path("/proc/cpuinfo")
) -> str | None:
    """Why KVM cannot be used here, or None when it can.

    Only ioctls that return at once are used (no trial boot), so this cannot hang.
    A nested machine may expose /dev/kvm while the CPU lacks VT-x/AMD-V, and then
    QEMU spins forever instead of booting: the CPU flag check catches that.
    """
    if not _cpu_has_virtualisation(cpuinfo):
        return "the CPU has no vmx/svm flag"
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return f"cannot open {device}: {error.strerror}"
    try:
        if fcntl.ioctl(fd, KVM_GET_API_VERSION) != KVM_API_VERSION:
            return f"{device} speaks an unexpected KVM API version"
        vm_fd = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        os.close(vm_fd)
    except OSError as error:
        return f"{device} cannot create a VM: {error.strerror}"
    finally:
        os.close(fd)
    return None


def choose(requested: str) -> AccelChoice:
    if requested == "tcg":
        return AccelChoice("tcg", None)
    problem = kvm_problem()
    if requested == "kvm":
        notice = f"warning: using KVM as requested although {problem}" if problem else None
        return AccelChoice("kvm", notice)
    if problem:
        return AccelChoice("tcg", f"notice: KVM is not usable ({problem}); using TCG emulation")
    return AccelChoice("kvm", None)
