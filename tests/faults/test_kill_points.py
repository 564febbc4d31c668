"""The CLI killed at chosen system calls, then checked as a user would (see ``scenarios``).

A sampled subset for CI: a few kill points per operation, named by what they hit (the
rename that puts a new VM in place, the write of the history line, ...) and resolved to
(syscall, N) against an unhindered, traced run of the same operation, so they follow the
code when calls are added or removed. ``bench/fault_sweep.py`` walks every N.

Each failure says which command, which kill point (syscall and N, and the call it hit),
which invariant and what was found. The unhindered runs are tests too: a violation there is
not caused by any kill. A point whose call no longer exists fails (pick a new call for it),
and so does one that hit another call than the profile's: no point may pass without
testing what it is named for.

``CLAN_VM_FAULT_SOURCE=DIR`` runs another checkout of the package (``python -m
clan_vm_tasks`` from DIR), e.g. an older commit unpacked with ``git archive``; there a
point whose call that code does not make is skipped.

Runtime with ``-n 3`` on two cores: 175 s while another test suite shared the machine
(load 4.5 to 7); the stop and start points, which boot the guest twice, take longest.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, Guest
from tests.faults import strace
from tests.faults.observe import cleanup
from tests.faults.runner import HarnessError, Runner, source_override
from tests.faults.scenarios import (
    OPERATIONS,
    PROFILE_SYSCALLS,
    KillPoint,
    profile,
    run_scenario,
)
from tests.faults.strace import Call, Fault

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")

RENAMES = ("rename", "renameat", "renameat2")
SPAWNS = ("clone", "fork", "vfork")  # not clone3: that makes threads
# Not wait4 either: whether the main thread or one of sh's threads reaps qemu-img varies.
HISTORY = r"history\.jsonl"
# An atomic write renames STATE/tmp/PID.RANDOM.tmp onto its target; its content shows in
# the write to the temp file before.
ONTO_STATE = r'"\$STATE/vms/fz/state\.json"\)'
ONTO_CONFIG = r'"\$STATE/vms/fz/config\.json"\)'
PID_RECORD = r"starting\W+n\W+pid\W+\d"  # the `starting` record with the pid
KEEPING = r'"\$STATE/vms/fz", "\$STATE/vms/\.keeping-fz-\d+"\)'
DELETING = r'"\$STATE/vms/fz", "\$STATE/vms/\.deleting-fz-\d+"\)'
QMP = r"qmp\.sock"
ONTO_NEXT = r'"\$STATE/vms/fz/next\.json"\)'

PID_RECORDED = KillPoint("start", ("connect",), match=QMP, after=PID_RECORD, label="pid-recorded")
EXEC_STATUS = KillPoint(
    "exec", ("write",), match="guest-exec-status", label="waiting-for-the-command"
)
# How a message is split into writes to the agent varies; the reads of the host's file do not.
COPY_IN_WRITING = KillPoint("copy-in", ("read",), "middle", label="writing", on="sent.bin")
PARTIAL = r"\.copied\.bin\.[0-9a-f]+\.partial"

POINTS = [
    # create: while qemu-img runs (sh starts its helper threads right after the fork:
    # qemu-img runs on, orphaned), the commit, history
    KillPoint("create", ("clone3",), "first", label="qemu-img-running"),
    KillPoint("create", RENAMES, "last", match=r'"\$STATE/vms/fz"\)', label="rename-into-place"),
    KillPoint("create", ("write",), match=HISTORY, label="write-history"),
    # start: recorded `starting` but QEMU not spawned; recorded with its pid but QMP not
    # asked; recorded running but no event
    KillPoint("start", ("vfork",), after=ONTO_STATE, label="after-starting-record"),
    PID_RECORDED,
    KillPoint("start", ("write",), match=HISTORY, label="write-history"),
    # start, interrupted instead of killed: it ends what it launched, or (once done) not
    replace(PID_RECORDED, signal="SIGINT"),
    KillPoint("start", RENAMES, "last", match=ONTO_STATE, signal="SIGTERM", label="record-running"),
    # The wait for READY polls the console log, and the QMP wait before it polls too, so
    # openat counts vary: hang up where start restores its SIGHUP handler, the last call
    # before the wait whose number does not vary (nothing is written later; the VM runs on).
    KillPoint(
        "start",
        ("rt_sigaction",),
        match=r"SIGHUP, \{sa_handler=SIG_DFL",
        after=HISTORY,
        signal="SIGHUP",
        label="waiting-for-ready",
    ),
    # stop: the guest powered off after the power button, not yet recorded stopped
    KillPoint("stop", RENAMES, match=ONTO_STATE, label="record-stopped"),
    # delete (the disk is kept): renaming the VM away; after it, before the hard link that
    # keeps the disk; after the link, before the disk's old name is removed; history
    KillPoint("delete", RENAMES, match=KEEPING, label="rename-away"),
    KillPoint("delete", ("link", "linkat"), after=KEEPING, label="link-kept-disk"),
    KillPoint("delete", ("unlink",), match=r"\.keeping-fz-\d+/disk\.qcow2", label="after-link"),
    KillPoint("delete", ("write",), match=HISTORY, label="write-history"),
    # delete --force: renamed away but no event; the event written, half removed
    KillPoint("delete-force", ("fsync",), after=DELETING, label="after-rename-away"),
    KillPoint("delete-force", ("unlinkat",), "middle", label="remove-files"),
    # delete --force of a running VM: QEMU ended by SIGTERM, not yet recorded stopped
    KillPoint("delete-force-running", RENAMES, match=ONTO_STATE, label="record-stopped"),
    # resize: the write-ahead marker, before qemu-img resize, the disk grown but the
    # definition not (before the rename that puts the new config.json in place), history
    KillPoint("resize", RENAMES, match=r"pending/fz\.resize", label="write-ahead"),
    KillPoint("resize", SPAWNS, "last", label="fork-qemu-img-resize"),
    KillPoint("resize", RENAMES, match=ONTO_CONFIG, label="rename-config"),
    KillPoint("resize", ("write",), match=HISTORY, label="write-history"),
    # snapshot of a stopped VM: after qemu-img snapshot (before its check), history
    KillPoint("snapshot", SPAWNS, "last", label="after-qemu-img-snapshot"),
    KillPoint("snapshot", ("write",), match=HISTORY, label="write-history"),
    # live snapshot: the job running in QEMU, history
    KillPoint("snapshot-live", ("sendto",), match="query-jobs", label="job-running"),
    KillPoint("snapshot-live", ("write",), match=HISTORY, label="write-history"),
    # set of a stopped VM: the write-ahead marker (the whole new definition), qemu-img
    # resize growing the disk, the disk grown but the definition not, history
    KillPoint("set", RENAMES, match=r"pending/fz\.set", label="write-ahead"),
    KillPoint("set", SPAWNS, "last", label="fork-qemu-img-resize"),
    KillPoint("set", RENAMES, match=ONTO_CONFIG, label="rename-config"),
    KillPoint("set", ("write",), match=HISTORY, label="write-history"),
    # set of a running VM: the change put aside for the next start, history
    KillPoint("set-running", RENAMES, match=ONTO_NEXT, label="rename-next"),
    KillPoint("set-running", ("write",), match=HISTORY, label="write-history"),
    # the start that applies it: qemu-img about to grow the disk, the definition replaced
    # but the change still waiting, its event (before the start's)
    KillPoint("start-after-set", SPAWNS, after=r"pending/fz\.set", label="fork-qemu-img"),
    KillPoint("start-after-set", RENAMES, match=ONTO_CONFIG, label="rename-config"),
    KillPoint("start-after-set", ("unlink",), match=r"vms/fz/next\.json", label="remove-next"),
    KillPoint("start-after-set", ("write",), match=HISTORY, label="write-set-history"),
    # exec: waiting for the command in the guest (the agent then has an answer nobody reads)
    EXEC_STATUS,
    replace(EXEC_STATUS, signal="SIGINT"),
    # copy out: its partial file half written (killed, and interrupted: removed by itself),
    # its record not yet in place, its record being rewritten, the rename into place
    KillPoint("copy-out", ("write",), "middle", match=PARTIAL, label="writing-partial"),
    KillPoint(
        "copy-out", ("write",), "middle", match=PARTIAL, signal="SIGTERM", label="writing-partial"
    ),
    KillPoint("copy-out", RENAMES, match=r"partials/\d+\.\w+\.new", label="record-partial"),
    # the record of the partial rewritten with what was made (its first write after the partial)
    KillPoint("copy-out", ("pwrite64",), after=PARTIAL, label="rewrite-record"),
    KillPoint("copy-out", RENAMES, match=PARTIAL + r'", "copied\.bin"', label="rename-into-place"),
    # copy in: its temporary file in the guest recorded on the host but not yet made; half
    # sent through the data port (killed, and interrupted: removed by itself); all of it sent
    # (the read that finds the end of the host's file), not yet followed by its end (which
    # the guest's dd reads to)
    KillPoint("copy-in", RENAMES, match=r"vms/fz/guest-temp/[0-9a-f]+", label="record-temp"),
    COPY_IN_WRITING,
    replace(COPY_IN_WRITING, signal="SIGTERM"),
    replace(COPY_IN_WRITING, at="last", label="all-written"),
    KillPoint("copy-in", ("shutdown",), label="end-of-data"),
    # ssh (the Debian guest, which boots slowly: two points): between the two renames of the
    # key pair, while the agent installs the key (the host key is pinned by an atomic write)
    KillPoint("ssh", RENAMES, "last", match=r"id_ed25519", label="key-pair"),
    KillPoint("ssh", ("write",), match=r'guest-exec\\"', label="installing-key"),
]


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory all xdist workers of this session share (the session's own otherwise)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


class Profiles:
    """Unhindered, traced runs of each operation, made once per session and shared by the
    xdist workers through files under a lock."""

    def __init__(self, root: Path, guest: Guest) -> None:
        self.root = root
        self.guest = guest

    def get(self, op: str) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        cached = self.root / f"{op}.json"
        with (self.root / f"{op}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not cached.exists():
                runner = Runner(self.root / op / "state")
                try:
                    outcome = profile(runner, OPERATIONS[op], self.guest)
                    data: dict[str, Any] = {
                        "calls": [asdict(c) for c in outcome.run.calls],
                        "violations": outcome.violations,
                        "report": outcome.report(),
                    }
                except HarnessError as error:  # every test of OP fails the same way
                    data = {"error": f"the unhindered run of {op} failed: {error}"}
                cached.write_text(json.dumps(data))
        loaded: dict[str, Any] = json.loads(cached.read_text())
        if "error" in loaded:
            pytest.fail(loaded["error"], pytrace=False)
        return loaded

    def calls(self, op: str) -> list[Call]:
        return [Call(**c) for c in self.get(op)["calls"]]


@pytest.fixture(scope="session")
def profiles(tmp_path_factory: pytest.TempPathFactory, guest: Guest) -> Profiles:
    return Profiles(_shared_dir(tmp_path_factory) / "fault-profiles", guest)


@pytest.fixture
def runner(cli: CLI) -> Iterator[Runner]:
    runner = Runner(cli.state_dir, cli.command(), cli.env)
    yield runner
    cleanup(cli.state_dir)  # also a QEMU whose pidfile is gone


# --- the harness itself: fast, no VM -----------------------------------------------------------


def _python_under_strace(tmp_path: Path, code: str, inject: str, follow: bool) -> int:
    # The injected call must be traced: with -e trace=none the injection silently never fires.
    argv = ["strace", "-qq", "-o", "/dev/null", "-e", "trace=rename", "-e", inject]
    argv += ["-f"] if follow else []
    result = subprocess.run(
        [*argv, "--", sys.executable, "-c", code], cwd=tmp_path, check=False, capture_output=True
    )
    return result.returncode


def test_strace_sigkill_comes_before_the_call_other_signals_after(tmp_path: Path) -> None:
    code = "import os; open('a', 'w').close(); os.rename('a', 'b')"
    inject = "inject=rename:signal=SIGKILL:when=1"
    assert _python_under_strace(tmp_path, code, inject, follow=False) == -9
    assert (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    (tmp_path / "a").unlink()
    inject = "inject=rename:signal=SIGTERM:when=1"
    assert _python_under_strace(tmp_path, code, inject, follow=False) == -15
    assert (tmp_path / "b").exists() and not (tmp_path / "a").exists()


def test_injected_sighup_works_even_when_the_harness_ignores_it(tmp_path: Path) -> None:
    """Under nohup the CLI would inherit SIGHUP ignored; the harness resets it (env)."""
    log = tmp_path / "log"
    fault = Fault("rename", 1, "SIGHUP")
    code = "import os; open('a', 'w').close(); os.rename('a', 'b')"
    argv = [*strace.strace_prefix(log, fault, (), "cli"), sys.executable, "-c", code]

    def ignore_sighup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    plain = subprocess.run(argv, cwd=tmp_path, check=False, preexec_fn=ignore_sighup)
    assert plain.returncode == 0  # the pitfall: the signal did nothing
    (tmp_path / "b").unlink()
    reset = subprocess.run(
        [*strace.DEFAULT_SIGNALS, *argv], cwd=tmp_path, check=False, preexec_fn=ignore_sighup
    )
    assert reset.returncode == -signal.SIGHUP


def test_strace_counts_each_thread_and_child_on_its_own(tmp_path: Path) -> None:
    """Why the harness does not use -f to count "the N-th call of the tree"."""
    code = (
        "import os\n"
        "for i in range(2): open(f'm{i}', 'w').close(); os.rename(f'm{i}', f'n{i}')\n"
        "if os.fork() == 0:\n"
        "    for i in range(3): open(f'c{i}', 'w').close(); os.rename(f'c{i}', f'd{i}')\n"
        "    os._exit(0)\n"
        "os.wait()\n"
    )
    inject = "inject=rename:signal=SIGKILL:when=3"
    assert _python_under_strace(tmp_path, code, inject, follow=True) == 0  # the parent lives
    # The child was killed at its own 3rd rename, not at the tree's 3rd.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c2", "d0", "d1", "n0", "n1"]


def test_trace_parsing_and_kill_point_resolution() -> None:
    log = "\n".join(
        [
            'openat(AT_FDCWD</x>, "/s/locks/fz.lock", O_RDWR|O_CREAT, 0600) = 3</s/locks/fz.lock>',
            'rename("/s/tmp/7.a1.tmp", "/s/pending/fz.create") = 0',
            'rename("/s/vms/.creating-fz-7/.config.json.7.tmp", "/s/vms/.creating-fz-7/c") = 0',
            'rename("/s/vms/.creating-fz-7", "/s/vms/fz") = ?',
            "+++ killed by SIGKILL +++",
        ]
    )
    calls = strace.parse_trace(log, Path("/s"))
    assert [c.name for c in calls] == ["openat", "rename", "rename", "rename"]
    assert calls[0].text.startswith('openat(AT_FDCWD, "$STATE/locks/fz.lock"')
    point = KillPoint("create", ("rename",), "last", match=r'/vms/fz"\)')
    resolved = point.resolve(calls)
    assert resolved is not None and resolved[0] == Fault("rename", 3)
    after = KillPoint("create", ("rename",), after=r"pending/")
    resolved = after.resolve(calls)
    assert resolved is not None and resolved[0] == Fault("rename", 2)
    assert KillPoint("create", ("unlink",)).resolve(calls) is None
    assert KillPoint("create", ("openat",), after="rename").resolve(calls) is None
    assert [c.text for c in strace.nth_calls(calls, "rename", 3)] == [calls[3].text]
    assert after.recognises(calls, Fault("rename", 2))
    assert not after.recognises(calls, Fault("rename", 1))  # before the call AFTER names
    assert point.recognises(calls, Fault("rename", 3))
    assert not point.recognises(calls, Fault("rename", 2))  # MATCH does not match
    assert not point.recognises(calls, Fault("rename", 4))  # never fired


def test_a_kill_point_on_a_file_counts_only_the_calls_on_it() -> None:
    log = "\n".join(
        [
            'read(5</w/sent.bin>, "a"..., 1048576) = 1048576',
            'read(4</run/agent.out>, "{"..., 1048576) = 40',
            'read(4</run/agent.out>, "{"..., 1048576) = 40',
            'read(5</w/sent.bin>, "b"..., 1048576) = 1048576',
            'read(5</w/sent.bin>, ""..., 1048576) = 0',
        ]
    )
    calls = strace.parse_trace(log)
    resolved = KillPoint("copy-in", ("read",), "middle", on="sent.bin").resolve(calls)
    assert resolved is not None and resolved == (Fault("read", 2, path="sent.bin"), calls[3])
    argv = strace.strace_prefix(Path("/l"), resolved[0], ["read"], "cli", Path("/w"))
    assert argv[argv.index("-P") + 1] == "/w/sent.bin"  # strace counts the calls on it alone


def test_kill_point_ids_are_unique() -> None:
    ids = [p.id for p in POINTS]
    assert len(ids) == len(set(ids))
    assert all(p.op in OPERATIONS for p in POINTS)


# --- the operations, unhindered and killed ----------------------------------------------------


@pytest.mark.vm
@pytest.mark.parametrize("op", sorted({p.op for p in POINTS}))
def test_unhindered(op: str, profiles: Profiles) -> None:
    """Without a fault every invariant holds (else the kill points below would be unfair)."""
    data = profiles.get(op)
    if data["violations"]:
        pytest.fail(f"without any fault:\n{data['report']}", pytrace=False)


@pytest.mark.vm
@pytest.mark.parametrize("point", POINTS, ids=lambda p: p.id)
def test_kill_point(point: KillPoint, profiles: Profiles, runner: Runner, guest: Guest) -> None:
    resolved = point.resolve(profiles.calls(point.op))
    if resolved is None:
        why = (
            f"{point.id}: the unhindered run makes no {'/'.join(point.syscalls)} call"
            + (f" matching {point.match!r}" if point.match else "")
            + (f" after one matching {point.after!r}" if point.after else "")
        )
        if source_override() is not None:
            pytest.skip(f"{why} (the code under test does not have this step)")
        pytest.fail(f"{why} any more: the code changed; pick a new call for it", pytrace=False)
    fault, expected = resolved
    began = time.monotonic()
    # Traced like the profile, so that the log shows which call was hit and what came before.
    outcome = run_scenario(runner, OPERATIONS[point.op], fault, guest, trace=PROFILE_SYSCALLS)
    if not outcome.run.fired:
        pytest.fail(
            f"{point.id}: {fault} never fired (expected to hit {expected.text[:200]})\n"
            + outcome.report(),
            pytrace=False,
        )
    drifted = not point.recognises(outcome.run.calls, fault)
    if outcome.violations or drifted:
        note = (
            f"\nthe kill point drifted (the calls before it varied): it hit another call than "
            f"the profile's {expected.text[:200]}"
        )
        pytest.fail(
            f"{point.id} ({time.monotonic() - began:.0f}s):\n{outcome.report()}"
            + (note if drifted else ""),
            pytrace=False,
        )
