"""Running the real CLI against one state directory, plainly or under strace with a fault."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.faults.strace import Fault, FaultRun, Scope, run_traced


class HarnessError(RuntimeError):
    """The harness could not set a scenario up: a broken test, not a finding."""


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def line(self) -> str:
        err = self.err.strip().splitlines()
        why = f": {err[-1]}" if err else ""
        return f"`clan-vm-manager {shlex.join(self.args)}` exited {self.code}{why}"


def source_override() -> Path | None:
    """``$CLAN_VM_FAULT_SOURCE``: test another checkout of the package (for example
    ``git archive HEAD`` unpacked somewhere) instead of the installed entry point."""
    source = os.environ.get("CLAN_VM_FAULT_SOURCE")
    return Path(source).resolve() if source else None


class Runner:
    """Runs the real CLI against one state directory, plainly or under strace.

    COMMAND defaults to this environment's ``clan-vm-manager``; with PYTHONPATH (or
    ``$CLAN_VM_FAULT_SOURCE``) it is ``python -m clan_vm_tasks`` from that directory.
    """

    def __init__(
        self,
        state_dir: Path,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        pythonpath: Path | None = None,
    ) -> None:
        self.state_dir = state_dir
        pythonpath = pythonpath or source_override()
        if pythonpath is not None:
            command = [sys.executable, "-m", "clan_vm_tasks"]
        self.command = list(command or [str(Path(sys.executable).parent / "clan-vm-manager")])
        base = dict(env if env is not None else os.environ)
        base["CLAN_VM_STATE_DIR"] = str(state_dir)
        base["CLAN_VM_CONFIG"] = "/nonexistent"
        base.pop("CLAN_VM_ACCEL", None)
        base.pop("CLAN_VM_DEBUG", None)
        # A kill point is one of the command's own system calls: it runs in this process,
        # not in a worker of the command server (``cli.handoff``), which strace cannot see.
        base["CLAN_VM_SERVER"] = "off"
        if pythonpath is not None:
            base["PYTHONPATH"] = str(pythonpath)
        self.env = base
        self.cwd = state_dir.parent
        self._logs = 0

    def run(self, *args: str, timeout: float = 240.0) -> Result:
        self.cwd.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [*self.command, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        return Result(tuple(args), proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, timeout: float = 240.0) -> Result:
        result = self.run(*args, timeout=timeout)
        if result.code != 0:
            raise HarnessError(f"setup step failed: {result.line()}")
        return result

    def traced(
        self,
        args: Sequence[str],
        fault: Fault | None,
        *,
        trace: Iterable[str] = (),
        scope: Scope | None = None,
        timeout: float = 300.0,
    ) -> FaultRun:
        """Run ARGS under strace with FAULT (None: only trace) and say what was hit.
        SCOPE defaults to the fault's (``cli`` without one)."""
        if scope is None:
            scope = fault.scope if fault is not None else "cli"
        self.cwd.mkdir(parents=True, exist_ok=True)
        self._logs += 1
        return run_traced(
            self.command,
            args,
            fault,
            log=self.cwd / f"strace-{os.getpid()}-{self._logs}.log",
            env=self.env,
            cwd=self.cwd,
            state_dir=self.state_dir,
            trace=trace,
            scope=scope,
            timeout=timeout,
        )
