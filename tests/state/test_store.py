"""The state directory survives crashes: atomic files, torn logs, leftovers, permissions."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clan_vm_tasks.backends.qemu import host_network
from clan_vm_tasks.names import mac_for
from clan_vm_tasks.state import files, history
from clan_vm_tasks.state.store import Store, VMPaths, VMState
from tests.conftest import CLI, Result


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


def test_an_event_after_a_torn_line_is_not_glued_to_it(tmp_path: Path) -> None:
    log = tmp_path / "history.jsonl"
    history.record(log, "a", "create")
    with log.open("ab") as f:
        f.write(b'{"timestamp": "2026-')  # a writer killed in the middle of its line
    history.record(log, "a", "start", "pid 1")
    assert [e.action for e in history.read(log)] == ["start", "create"]
    assert log.read_bytes().endswith(b"\n")


def test_history_lines_of_the_wrong_shape_are_skipped(cli: CLI) -> None:
    cli.ok("create", "shape", "--disk", "16")
    with (cli.state_dir / "history.jsonl").open("ab") as f:
        for line in (
            {"timestamp": 5, "vm": "shape", "action": "x", "user": "u", "details": ""},
            {"vm": "shape", "action": "x"},
            {"timestamp": "t", "vm": ["shape"], "action": "x", "user": "u", "details": ""},
            ["not", "an", "object"],
        ):
            f.write(json.dumps(line).encode() + b"\n")
    events = json.loads(cli.ok("history", "--json").out)
    assert [e["action"] for e in events] == ["create"]
    assert "shape" in cli.ok("history").out


def test_a_short_write_leaves_no_partial_line(tmp_path: Path, monkeypatch: object) -> None:
    log = tmp_path / "history.jsonl"
    history.append(log, "a", "create")
    before = log.read_bytes()
    real_write = os.write

    def short(fd: int, data: bytes) -> int:
        return real_write(fd, data[:7])  # a full disk takes only part of the line

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "write", short)
        with pytest.raises(OSError, match="only 7 of"):
            history.append(log, "a", "start")
        warnings: list[str] = []
        history.record(log, "a", "start", warn=warnings.append)
    assert log.read_bytes() == before
    assert warnings and "history was not updated" in warnings[0]


def test_an_operation_that_took_effect_succeeds_when_its_history_cannot_be_written(
    cli: CLI,
) -> None:
    cli.state_dir.mkdir(parents=True)
    (cli.state_dir / "history.jsonl").mkdir()  # not writable as a file
    result = cli.ok("create", "quiet", "--disk", "16")
    assert "created VM 'quiet'" in result.out
    assert "warning: the history was not updated (create of 'quiet')" in result.err
    assert [v["name"] for v in json.loads(cli.ok("list", "--json").out)] == ["quiet"]


def qemu_img_cannot_run(cli: CLI, *args: str) -> Result:
    """Run the CLI with every exec of qemu-img failing."""
    argv = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=execve", "-P"]
    argv += ["/usr/bin/qemu-img", "-e", "inject=execve:error=EACCES", *cli.command(), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=cli.env, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_failed_create_and_snapshot_are_recorded_as_failed(cli: CLI) -> None:
    failed = qemu_img_cannot_run(cli, "create", "doomed", "--disk", "16")
    assert failed.code == 1 and failed.err.startswith("error: qemu-img create could not run")
    assert "Traceback" not in failed.err
    assert not (cli.state_dir / "vms" / "doomed").exists()
    cli.ok("create", "snappy", "--disk", "16")
    failed = qemu_img_cannot_run(cli, "snapshot", "snappy", "s1")
    assert failed.code == 1, failed
    events = json.loads(cli.ok("history", "--json").out)
    assert [(e["vm"], e["action"], e["result"]) for e in events] == [
        ("snappy", "snapshot", "failed"),
        ("snappy", "create", "ok"),
        ("doomed", "create", "failed"),
    ]


def test_deletes_in_one_second_never_replace_a_kept_disk(tmp_path: Path) -> None:
    store = Store(tmp_path / "state").ensure()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "strftime", lambda fmt: "20261128T120000")
        kept = []
        for number in range(4):
            disk = tmp_path / f"disk{number}"
            disk.write_text(str(number))
            kept.append(store.keep_disk(disk, "web"))
    assert [p.name for p in kept] == [
        "web-20261128T120000.qcow2",
        "web-20261128T120000-2.qcow2",
        "web-20261128T120000-3.qcow2",
        "web-20261128T120000-4.qcow2",
    ]
    assert [p.read_text() for p in kept] == ["0", "1", "2", "3"]


def test_what_killed_commands_left_is_cleared_by_the_next_command(cli: CLI) -> None:
    cli.ok("create", "keeper", "--disk", "16")
    vms, locks = cli.state_dir / "vms", cli.state_dir / "locks"
    # A delete killed after renaming the VM away, before it moved the kept disk out.
    dead = 2**22 + 17  # above pid_max: no live process has it
    (vms / "keeper").rename(vms / f".keeping-keeper-{dead}")
    (vms / f".creating-half-{dead}").mkdir()
    (locks / "ghost.lock").touch()
    (locks / "ghost.console").touch()
    (cli.state_dir / "tmp" / f"{dead}.abcd.tmp").write_text("torn")
    assert cli.ok("list", "--json").out.strip() == "[]"
    assert sorted(p.name for p in vms.iterdir()) == []
    assert sorted(p.name for p in locks.iterdir()) == []
    assert list((cli.state_dir / "tmp").iterdir()) == []
    kept = list((cli.state_dir / "kept-disks").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("keeper-")
    events = json.loads(cli.ok("history", "--json").out)
    assert events[0]["action"] == "delete" and "kept at" in events[0]["details"]
    assert "after an interruption" in events[0]["details"]


def test_a_read_only_command_with_an_unusable_home_creates_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CLAN_VM_STATE_DIR", "XDG_STATE_HOME")}
    env.update(HOME=str(tmp_path / "no-home"), CLAN_VM_CONFIG="/nonexistent")
    cli = [str(Path(sys.executable).parent / "clan-vm-manager")]
    for args, code in ((["list"], 0), (["history"], 0), (["status", "web"], 2)):
        result = subprocess.run([*cli, *args], env=env, capture_output=True, text=True)
        assert result.returncode == code, result
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "no-home").exists()


def test_a_qemu_img_started_by_a_killed_command_does_not_outlive_it(cli: CLI) -> None:
    """qemu-img is slowed down at its writes; the command that started it is killed."""
    argv = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=pwrite64"]
    argv += ["-e", "inject=pwrite64:delay_enter=3000000", *cli.command(), "create", "slow"]
    tracer = subprocess.Popen(argv, env=cli.env, stdout=subprocess.DEVNULL)

    def processes(word: str) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                entry.isdigit()
                and any(word.encode() in a for a in cmdline[:1])
                and any(str(cli.state_dir).encode() in a for a in cmdline)
            ):
                found.append(int(entry))
        return found

    deadline = time.monotonic() + 60
    while not processes("qemu-img"):
        assert time.monotonic() < deadline and tracer.poll() is None
        time.sleep(0.05)

    def cmdline(pid: str) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # ended meanwhile
            return b""

    command = [
        int(e) for e in os.listdir("/proc")
        if e.isdigit() and b"create\0slow" in cmdline(e) and b"strace" not in cmdline(e)
    ]  # fmt: skip
    assert command
    os.kill(command[0], 9)
    tracer.wait(timeout=30)
    deadline = time.monotonic() + 10
    while processes("qemu-img"):
        assert time.monotonic() < deadline, "qemu-img outlived the command that started it"
        time.sleep(0.1)
    cli.ok("list")  # the next command clears the half-created VM
    assert [p.name for p in (cli.state_dir / "vms").iterdir()] == []


def test_an_atomic_write_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    """Where the tool writes into a directory that is not its own (boot-test --junit FILE),
    a link planted at the file's name is replaced, never followed."""
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "junit.xml").symlink_to(victim)
    files.atomic_write(shared / "junit.xml", b"<testsuite/>\n", mode=0o644)
    assert victim.read_text() == "untouched\n"
    assert not (shared / "junit.xml").is_symlink()
    assert (shared / "junit.xml").read_bytes() == b"<testsuite/>\n"
    assert sorted(p.name for p in shared.iterdir()) == ["junit.xml"]  # no temporary file left


def test_derived_names_stay_what_earlier_versions_made(tmp_path: Path) -> None:
    """A running VM's sockets, its tap device and its MAC are found by names derived with
    SHA-256: however the digest is computed, they are the ones an earlier version made."""
    vm_dir = tmp_path / "vms" / "web"
    expected = hashlib.sha256(str(vm_dir).encode()).hexdigest()
    assert VMPaths(vm_dir).run.name == expected[:16]
    assert host_network.tap_name(vm_dir) == "cvm" + expected[:12]
    assert mac_for("web") == "02:9d:da:a1:2d:71"
