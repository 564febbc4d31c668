"""Shared fixtures: the example guest, a private state directory, and a CLI runner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from examples import guest as example_guest

ROOT = Path(__file__).resolve().parent.parent
READY = example_guest.READY_LINE
BOOT_TIMEOUT = "120"


@dataclass(frozen=True)
class Guest:
    kernel: Path
    initrd: Path


@pytest.fixture(scope="session")
def guest() -> Guest:
    """The example guest that ./scripts/setup built (built here if it is missing or stale)."""
    out = Path(os.environ.get("CLAN_VM_TEST_GUEST", ROOT / ".cache" / "guest"))
    kernel, initrd = out / "vmlinuz", out / "initrd"
    if not example_guest.built(out):  # missing, or without a module added since
        example_guest.build(out)
    return Guest(kernel, initrd)


@dataclass
class Result:
    code: int
    out: str
    err: str


class CLI:
    """Runs the real ``clan-vm-manager`` (or another entry point) against one state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {
            **os.environ,
            "CLAN_VM_STATE_DIR": str(state_dir),
            "CLAN_VM_CONFIG": "/nonexistent",
        }
        self.env.pop("CLAN_VM_ACCEL", None)

    def command(self, entry: str = "clan-vm-manager") -> list[str]:
        bindir = Path(sys.executable).parent
        if entry == "module":
            return [sys.executable, "-m", "clan_vm_tasks"]
        return [str(bindir / entry)]

    def run(
        self,
        *args: str,
        entry: str = "clan-vm-manager",
        stdin: str | None = None,
        timeout: float = 180,
        cwd: Path | None = None,
    ) -> Result:
        proc = subprocess.run(
            [*self.command(entry), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            cwd=cwd or self.state_dir.parent,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, **kwargs: object) -> Result:
        result = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert result.code == 0, f"{args} failed ({result.code}): {result.err}{result.out}"
        return result

    def create_guest(
        self,
        name: str,
        guest: Guest,
        *extra: str,
        append: str = "console=ttyS0 quiet no_timer_check",
        **run_options: Any,
    ) -> Result:
        return self.ok(
            "create",
            name,
            "--cpus",
            "1",
            "--memory",
            "192",
            "--disk",
            "64",
            "--kernel",
            str(guest.kernel),
            "--initrd",
            str(guest.initrd),
            "--append",
            append,
            *extra,
            **run_options,
        )

    def boot(self, name: str, guest: Guest, *extra: str, **kwargs: str) -> Result:
        self.create_guest(name, guest, *extra, **kwargs)
        return self.ok("start", name, "--wait-for", READY, "--timeout", BOOT_TIMEOUT)


def kill_leftover_qemu(state_dir: Path) -> None:
    """Whatever a failed test left running under this state dir must not outlive it."""
    for pidfile in state_dir.glob("vms/*/qemu.pid"):
        try:
            pid = int(pidfile.read_text())
            if str(pidfile) in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
    # Taps made for bridged VMs are host-wide: never leave one behind.
    for state_file in state_dir.glob("vms/*/state.json"):
        try:
            tap = json.loads(state_file.read_text()).get("tap")
        except (OSError, ValueError):
            continue
        if isinstance(tap, str) and Path(f"/sys/class/net/{tap}").exists():
            subprocess.run(["ip", "link", "delete", tap], check=False, capture_output=True)
    # The runtime directories live outside the state dir, which pytest removes: without
    # this, every test's VMs would leave theirs in /tmp/clan-vm-UID/ (delete removes them).
    from clan_vm_tasks.state.store import VMPaths

    for vm_dir in state_dir.glob("vms/*"):
        shutil.rmtree(VMPaths(vm_dir).run, ignore_errors=True)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    kill_leftover_qemu(path)


@pytest.fixture
def cli(state_dir: Path) -> CLI:
    return CLI(state_dir)


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def as_nobody(*argv: str) -> None:
    """Run ARGV as another local user (nobody), as an attacker on this machine would. Where
    nobody cannot run a program at all (a root file system only root may enter, as in a
    chroot made in a private directory) the test is skipped, saying so."""
    probe = subprocess.run([*NOBODY, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"another user cannot run programs here: {probe.stderr.strip()}")
    subprocess.run([*NOBODY, *argv], check=True)


def end_command_servers() -> None:
    """End the command servers this checkout's commands started (``cli.handoff``), those
    still starting too: a test run leaves no process behind. (Another installation's servers
    are left alone.)"""
    venv = str(Path(sys.executable).parent.parent) + "/"
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv[0].startswith(venv.encode()) and b"clan_vm_tasks.cli.server" in argv:
                os.kill(int(entry.name), signal.SIGTERM)
        except (OSError, ValueError):
            continue


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller, once every worker ended
        end_command_servers()
