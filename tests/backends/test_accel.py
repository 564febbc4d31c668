"""The KVM probe decides from facts, quickly, and falls back to TCG with a notice."""

from __future__ import annotations

import time
from pathlib import Path

from clan_vm_tasks.backends.qemu import accel


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
    return path


def test_no_virtualisation_flag_means_no_kvm(tmp_path: Path) -> None:
    problem = accel.kvm_problem(Path("/dev/kvm"), cpuinfo(tmp_path, "lm"))
    assert problem == "the CPU has no vmx/svm flag"


def test_missing_or_wrong_device_means_no_kvm(tmp_path: Path) -> None:
    info = cpuinfo(tmp_path, "vmx")
    assert "cannot open" in (accel.kvm_problem(tmp_path / "nokvm", info) or "")
    assert "cannot create a VM" in (accel.kvm_problem(Path("/dev/null"), info) or "")


def test_choice_on_this_machine_is_quick_and_consistent() -> None:
    began = time.monotonic()
    choice = accel.choose("auto")
    assert time.monotonic() - began < 1.0  # a probe, never a trial boot
    problem = accel.kvm_problem()
    assert choice.accel == ("tcg" if problem else "kvm")
    assert (choice.notice is not None) == (problem is not None)
    assert accel.choose("tcg") == accel.AccelChoice("tcg", None)
    assert accel.choose("kvm").accel == "kvm"
