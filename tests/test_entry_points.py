"""The same tasks through clan-vm-manager, python -m, invoke and the Python API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clan_vm_tasks import lifecycle
from examples.guest import POWER_BUTTON_LINE
from tests.conftest import CLI, READY, ROOT, Guest

TASKS = sorted(
    [
        "boot-test",
        "build",
        "console",
        "copy",
        "create",
        "delete",
        "eval",
        "exec",
        "history",
        "inventory",
        "kept-disks",
        "list",
        "pause",
        "resize",
        "restart",
        "resume",
        "revert",
        "serve",
        "set",
        "show",
        "snapshot",
        "snapshots",
        "ssh",
        "start",
        "status",
        "stop",
        "switch",
    ]
)


@pytest.mark.parametrize(
    "args", [("start", "--help"), ("--help", "start"), ("start", "web", "--help")]
)
def test_task_help_both_ways(cli: CLI, args: tuple[str, ...]) -> None:
    result = cli.ok(*args)
    assert result.out.startswith("Usage: clan-vm-manager start NAME [--foreground]")
    assert "--wait-for TEXT" in result.out and "--name" not in result.out
    assert "Examples:\n  clan-vm-manager start web" in result.out


@pytest.mark.parametrize("where", [ROOT, ROOT / "templates" / "default"])
def test_invoke_finds_every_task_in_the_repository_and_the_template(cli: CLI, where: Path) -> None:
    listed = cli.ok("--list", entry="invoke", cwd=where).out
    assert sorted(re.findall(r"^  (\S+)", listed, re.MULTILINE)) == TASKS
    assert cli.ok("--list", entry="module").out == cli.ok("--list").out


@pytest.mark.vm
def test_invoke_and_module_drive_the_same_vm(cli: CLI, guest: Guest) -> None:
    cli.create_guest("shared", guest, entry="invoke", cwd=ROOT)
    started = cli.run("start", "shared", "--wait-for", READY, entry="invoke", cwd=ROOT)
    assert started.code == 0, started.err
    assert (
        json.loads(cli.ok("status", "shared", "--json", entry="module").out)["state"] == "running"
    )
    stopped = cli.run("stop", "shared", entry="invoke", cwd=ROOT)
    assert stopped.code == 0 and "(acpi)" in stopped.out
    actions = [e["action"] for e in json.loads(cli.ok("history", "--json").out)]
    assert actions == ["stop", "start", "create"]


@pytest.mark.vm
def test_python_api(state_dir: Path, guest: Guest) -> None:
    settings = lifecycle.Settings(state_dir=state_dir, accel="tcg")
    store = lifecycle.open_store(settings)
    config = lifecycle.VMConfig(
        name="api",
        cpus=1,
        memory=192,
        disk_size=32,
        kernel=guest.kernel,
        initrd=guest.initrd,
        append="console=ttyS0 quiet no_timer_check",
    )
    lifecycle.create(store, config)
    started = lifecycle.start(store, settings, "api", wait_for=READY, timeout=120)
    assert started.accel == "tcg" and lifecycle.status(store, "api")["state"] == "running"
    assert READY.encode() in lifecycle.console_log(store, "api")
    stopped = lifecycle.stop(store, "api")
    assert stopped.step == "acpi"
    assert lifecycle.delete(store, "api", force=True) is None
    assert lifecycle.list_vms(store) == []


@pytest.mark.vm
def test_foreground_streams_the_console_and_stops_gracefully_on_sigterm(
    cli: CLI, guest: Guest
) -> None:
    cli.create_guest("front", guest)
    proc = subprocess.Popen(
        [*cli.command(), "start", "front", "--foreground"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + 120
    os.set_blocking(proc.stdout.fileno(), False)
    while READY.encode() not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen
        seen += proc.stdout.read() or b""
        time.sleep(0.1)
    assert json.loads(cli.ok("status", "front", "--json").out)["state"] == "running"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    os.set_blocking(proc.stdout.fileno(), True)
    seen += proc.stdout.read()
    assert POWER_BUTTON_LINE.encode() in seen
    assert json.loads(cli.ok("status", "front", "--json").out)["state"] == "stopped"
