"""The state directory survives crashes: atomic files, torn logs, leftovers, permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from clan_vm_tasks.state import files, history
from clan_vm_tasks.state.store import Store, VMState
from tests.conftest import CLI


def test_state_dir_is_private(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    Store(root).ensure()
    for path in (root, root / "vms", root / "locks"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_created_vm_files_are_private(cli: CLI) -> None:
    cli.ok("create", "web", "--disk", "16")
    assert stat.S_IMODE(cli.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((cli.state_dir / "vms" / "web").stat().st_mode) == 0o700
    assert stat.S_IMODE((cli.state_dir / "vms" / "web" / "state.json").stat().st_mode) == 0o600


def test_atomic_write_never_leaves_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    files.atomic_write(target, b"old")
    # A writer killed mid-way leaves only its temp file; the target keeps the old content.
    script = (
        "import os,sys; from pathlib import Path; from clan_vm_tasks.state import files;"
        "os.fsync = lambda fd: os.kill(os.getpid(), 9);"
        "files.atomic_write(Path(sys.argv[1]), b'new' * 100000)"
    )
    subprocess.run([sys.executable, "-c", script, str(target)], check=False)
    assert target.read_bytes() == b"old"


def test_unreadable_state_is_repaired_as_stopped(tmp_path: Path) -> None:
    for raw in (b"", b"{", b"[]", b'{"status": "exploded", "pid": "seven"}', b"\x00\xff"):
        state = VMState.from_json(raw)
        assert state.status == "stopped" and state.pid is None
    assert VMState.from_json(VMState(status="running", pid=5, pid_start=9).to_json()).pid == 5


def test_corrupt_state_file_does_not_break_commands(cli: CLI) -> None:
    cli.ok("create", "web", "--disk", "16")
    (cli.state_dir / "vms" / "web" / "state.json").write_text("{ half a fi")
    assert json.loads(cli.ok("status", "web", "--json").out)["state"] == "stopped"
    assert [v["name"] for v in json.loads(cli.ok("list", "--json").out)] == ["web"]


def test_interrupted_create_and_delete_leave_nothing_visible(cli: CLI) -> None:
    vms = cli.state_dir / "vms"
    cli.ok("create", "web-2", "--disk", "16")
    (vms / ".creating-web-12345").mkdir()
    (vms / ".deleting-web-999").mkdir()
    assert [v["name"] for v in json.loads(cli.ok("list", "--json").out)] == ["web-2"]
    cli.ok("create", "web", "--disk", "16")  # sweeps what an interrupted run left for "web"
    assert sorted(p.name for p in vms.iterdir()) == ["web", "web-2"]


def test_history_is_append_only_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    log = tmp_path / "history.jsonl"
    history.record(log, "a", "create")
    history.record(log, "b", "create")
    history.record(log, "a", "start", "pid 1")
    with log.open("ab") as f:
        f.write(b'{"timestamp": "2026-')  # a crash in the middle of a write
    events = history.read(log)
    assert [(e.vm, e.action) for e in events] == [("a", "start"), ("b", "create"), ("a", "create")]
    assert [e.action for e in history.read(log, vm="a", limit=1)] == ["start"]
    assert events[0].user and events[0].timestamp.endswith("+00:00")


def test_history_from_parallel_writers_has_every_line_intact(tmp_path: Path) -> None:
    log = tmp_path / "history.jsonl"
    script = (
        "import sys; from pathlib import Path; from clan_vm_tasks.state import history;"
        "[history.record(Path(sys.argv[1]), sys.argv[2], 'x', 'd' * 5000) for _ in range(50)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(log), f"w{i}"]) for i in range(4)]
    assert [p.wait() for p in procs] == [0] * 4
    lines = log.read_bytes().splitlines()
    assert len(lines) == 200 and all(json.loads(line)["details"] == "d" * 5000 for line in lines)


def test_state_dir_from_environment_and_xdg(tmp_path: Path, monkeypatch: object) -> None:
    from clan_vm_tasks.state.settings import Settings

    env = {**os.environ}
    try:
        os.environ.pop("CLAN_VM_STATE_DIR", None)
        os.environ["XDG_STATE_HOME"] = str(tmp_path / "xdg")
        os.environ["CLAN_VM_CONFIG"] = "/nonexistent"
        assert Settings.load().state_dir == tmp_path / "xdg" / "clan-vm"
        os.environ["CLAN_VM_STATE_DIR"] = str(tmp_path / "explicit")
        assert Settings.load().state_dir == tmp_path / "explicit"
        config = tmp_path / "config.yaml"
        config.write_text("accel: tcg\n")
        os.environ["CLAN_VM_CONFIG"] = str(config)
        assert Settings.load().accel == "tcg"
    finally:
        os.environ.clear()
        os.environ.update(env)
