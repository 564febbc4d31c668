"""Helpers for tests that talk to a booted guest: run shell lines, wait for console text."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.conftest import CLI


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
