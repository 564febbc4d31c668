"""Commands racing each other: locks make them serialise per VM, not across VMs."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import CLI, Guest


def qemu_pids(state_dir: Path) -> list[int]:
    """Live QEMU processes started for this state dir (found by their pidfile argument)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(state_dir) in cmdline and "qemu-system" in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


@pytest.mark.vm
def test_two_simultaneous_starts_give_one_qemu_and_one_clear_error(cli: CLI, guest: Guest) -> None:
    cli.create_guest("race", guest)
    command = [*cli.command(), "start", "race"]
    procs = [
        subprocess.Popen(
            command, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    loser_err = next(err for code, _, err in results if code == 1)
    assert (
        loser_err.startswith("error: VM 'race' is already running") and "Traceback" not in loser_err
    )
    assert len(qemu_pids(cli.state_dir)) == 1
    events = json.loads(cli.ok("history", "--json").out)
    assert [e["action"] for e in events] == ["start", "create"]
    cli.ok("stop", "race", "--force")
    assert qemu_pids(cli.state_dir) == []


def test_ten_parallel_creates_all_succeed(cli: CLI) -> None:
    names = [f"vm{i}" for i in range(10)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda n: cli.run("create", n, "--disk", "16"), names))
    assert [r.code for r in results] == [0] * 10, [r.err for r in results]
    listed = json.loads(cli.ok("list", "--json").out)
    assert sorted(v["name"] for v in listed) == sorted(names)
    events = json.loads(cli.ok("history", "--json").out)
    assert sorted(e["vm"] for e in events if e["action"] == "create") == sorted(names)
    assert len(events) == 10
    for name in names:
        assert (cli.state_dir / "vms" / name / "disk.qcow2").is_file()
    assert not [p for p in (cli.state_dir / "vms").iterdir() if p.name.startswith(".")]


def test_parallel_creates_of_one_name_create_it_once(cli: CLI) -> None:
    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(lambda _: cli.run("create", "same", "--disk", "16"), range(5)))
    assert sorted(r.code for r in results) == [0, 1, 1, 1, 1]
    assert all("already exists" in r.err for r in results if r.code)
    events = json.loads(cli.ok("history", "--json").out)
    assert [e["action"] for e in events] == ["create"]
