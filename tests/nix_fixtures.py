"""The offline test flake (tests/nix/flake.nix) in a git repository of its own."""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from examples import guest as example_guest
from tests.conftest import CLI, ROOT, Guest

NIX = shutil.which("nix")
needs_nix = pytest.mark.skipif(NIX is None, reason="nix is not installed (./scripts/setup)")


def git(directory: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=test@example.invalid", "-c", "user.name=test", *args],
        cwd=directory,
        check=True,
        capture_output=True,
    )


@functools.cache
def git_flakes_problem() -> str | None:
    """Why Nix cannot evaluate a flake in a git checkout here, or None. Nix before 2.17, run
    by root in a chroot (as ../shared/tools/fresh-machine runs the suite), runs git outside
    the chroot, where the checkout does not exist (NixOS/nix#7602)."""
    if NIX is None:
        return "nix is not installed (./scripts/setup)"
    with tempfile.TemporaryDirectory() as directory:
        flake = Path(directory)
        (flake / "flake.nix").write_text("{ outputs = _: { probe = 1; }; }")
        git(flake, "init", "-q")
        git(flake, "add", "flake.nix")
        argv = ["nix", "--extra-experimental-features", "nix-command flakes", "eval"]
        try:
            probe = subprocess.run(
                [*argv, f"{flake}#probe"], capture_output=True, text=True, check=False, timeout=120
            )
        except subprocess.TimeoutExpired:
            return "nix eval of a one-line flake did not finish within 120 s"
    if probe.returncode != 0 and "cannot change to" in probe.stderr:
        return (
            "this Nix, run by root in a chroot, runs git outside the chroot "
            "(NixOS/nix#7602, fixed in Nix 2.17): flakes in git checkouts cannot be evaluated"
        )
    return None


def skip_without_git_flakes() -> None:
    problem = git_flakes_problem()
    if problem:
        pytest.skip(problem)


def make_flake(directory: Path, guest: Guest) -> Path:
    """Copy the test flake, kernel, modules, busybox and init scripts; commit them."""
    skip_without_git_flakes()
    (directory / "guest" / "modules").mkdir(parents=True)
    for name in ("flake.nix", "build-initrd.sh"):
        shutil.copy(ROOT / "tests" / "nix" / name, directory / name)
    shutil.copy(ROOT / "lib" / "apps.nix", directory / "apps.nix")
    shutil.copy(guest.kernel, directory / "vmlinuz")
    shutil.copy("/bin/busybox", directory / "busybox")
    for module in (guest.kernel.parent / "modules").glob("*.ko"):
        shutil.copy(module, directory / "guest" / "modules" / module.name)
    (directory / "guest" / "init").write_text(example_guest.INIT_SCRIPT)
    (directory / "guest" / "power.sh").write_text(example_guest.POWER_SCRIPT)
    (directory / "guest" / "acpid.conf").write_text("PWRF power.sh\n")
    for name, mode, data in example_guest.agent_entries(guest.kernel.parent / "qemu-ga"):
        path = directory / "guest" / "agent" / name
        if stat.S_ISDIR(mode):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(stat.S_IMODE(mode))
    git(directory, "init", "-q")
    git(directory, "add", "-A")
    git(directory, "commit", "-qm", "test flake")
    return directory


@pytest.fixture(scope="session")
def test_flake(tmp_path_factory: pytest.TempPathFactory, guest: Guest) -> Path:
    """One committed copy per test session (per xdist worker); tests must not edit it."""
    return make_flake(tmp_path_factory.mktemp("flake"), guest)


@pytest.fixture
def own_flake(tmp_path: Path, guest: Guest) -> Path:
    """A copy a test may edit."""
    return make_flake(tmp_path / "flake", guest)


class NixCLI(CLI):
    """The CLI with nix kept offline and every nix invocation logged."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.nix_log = state_dir.parent / "nix.log"
        self.env["CLAN_VM_NIX_OFFLINE"] = "1"
        self.env["CLAN_VM_NIX_LOG"] = str(self.nix_log)
        self.env.pop("CLAN_VM_FLAKE", None)

    def nix_run(self, flake: Path, app: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``nix run FLAKE#APP -- ARGS``, offline; the app finds clan-vm-manager on PATH."""
        bindir = Path(self.command()[0]).parent
        argv = ["nix", "--extra-experimental-features", "nix-command flakes"]
        argv += ["--option", "substituters", "", "run", f"{flake}#{app}", "--", *args]
        return subprocess.run(
            argv,
            env={**self.env, "PATH": f"{bindir}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def nix_calls(self, kind: str = "") -> int:
        """How many nix invocations were logged (only those with KIND among their arguments)."""
        if not self.nix_log.exists():
            return 0
        lines = self.nix_log.read_text().splitlines()
        return sum(1 for line in lines if f'"{kind}"' in line) if kind else len(lines)


@pytest.fixture
def ncli(state_dir: Path) -> NixCLI:
    return NixCLI(state_dir)
