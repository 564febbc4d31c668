"""Helpers for tests that talk to a booted guest: run shell lines, wait for console text."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import CLI, Result

# A real public key (its private half thrown away), for guests that must offer one.
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0dlvkB9Bml7svmZHUnXWVtgixB999p9exgfDNZUH4y"


def console_log(cli: CLI, name: str) -> str:
    path = cli.state_dir / "vms" / name / "console.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_console(cli: CLI, name: str, text: str, timeout: float = 60, after: int = 0) -> str:
    """Wait until TEXT appears in the console log after character AFTER; return the log."""
    deadline = time.monotonic() + timeout
    while True:
        log = console_log(cli, name)
        if text in log[after:]:
            return log
        assert time.monotonic() < deadline, f"{text!r} never appeared on {name}'s console"
        time.sleep(0.1)


def guest_run(cli: CLI, name: str, line: str, done: str, timeout: float = 60) -> str:
    """Type LINE into the guest's root shell and return the console output it caused.

    LINE must make the guest print DONE when it has finished.
    """
    before = len(console_log(cli, name))
    cli.ok("console", name, stdin=line + "\n", timeout=timeout)
    return wait_console(cli, name, done, timeout, after=before)[before:]


def status(cli: CLI, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cli.ok("status", name, "--json").out)
    return result


def history_actions(cli: CLI, name: str) -> list[str]:
    return [e["action"] for e in json.loads(cli.ok("history", "--vm", name, "--json").out)]


def disk_of(cli: CLI, name: str) -> Path:
    return cli.state_dir / "vms" / name / "disk.qcow2"


def one_error(result: Result, code: int = 1) -> str:
    """The single error line of RESULT (exit CODE), with no trace of a crash of ours."""
    lines = [line for line in result.err.strip().splitlines() if not line.startswith("notice:")]
    assert result.code == code, result
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "internal error" not in result.err and "Traceback" not in result.err
    return lines[0]


def peak(cli: CLI, *args: str, timeout: float = 120) -> tuple[Result, int]:
    """Run the CLI in a process of its own; its result and peak RSS in MiB."""
    wrapper = (
        "import resource, subprocess, sys, json\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024\n"
        "print(json.dumps([p.returncode, p.stdout, p.stderr, rss]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, *cli.command(), *args],
        capture_output=True,
        text=True,
        env=cli.env,
        timeout=timeout,
        check=True,
    )
    code, out, err, rss = json.loads(proc.stdout)
    return Result(code, out, err), rss
