"""One fault scenario: an operation set up, run with a fault, then checked as a user would.

``run_scenario`` sets the operation up (create the VM, write a marker into its disk with
``qemu-io``, boot it if needed), runs it with the fault (``strace``), lets what it set in
motion settle (an orphaned ``qemu-img``, a guest that got the power button), runs
``list --json`` once (the tool finishes interrupted work at the start of every command) and
checks invariants 1, 2, 5 and 6 (``invariants``); then it runs the natural next commands
(invariant 3) and checks 4, 2 and 1 again. ``observe.cleanup`` kills whatever still runs for
the state directory afterwards.

Kill points are chosen from ``profile``, an unhindered traced run: ``KillPoint`` names one
by what it hits, ``strace.sweep_faults`` lists them all.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from tests.faults import guest_ops
from tests.faults.invariants import (
    ACTIVE,
    INVARIANTS,
    check_disk_data,
    check_history,
    check_leftovers,
    check_list,
    check_untracked_qemu,
    history_events,
)
from tests.faults.observe import (
    cleanup,
    console_size,
    image_mib,
    image_snapshots,
    processes,
    qemu_by_vm,
    read_json,
    vm_exists,
    wait_console,
    write_marker,
)
from tests.faults.runner import HarnessError, Result, Runner
from tests.faults.strace import Call, Fault, FaultRun, Scope, nth_calls

READY = "clan-guest: READY"
NAME = "fz"
SNAPSHOT = "s1"
DISK_MIB = 64
GROWN_MIB = 128
APPEND = "console=ttyS0 quiet no_timer_check"

# Everything worth killing at; a profile traces these, a sweep walks them.
PROFILE_SYSCALLS = (
    "rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat", "rmdir",
    "mkdir", "openat", "read", "write", "pwrite64", "fsync", "fdatasync", "ftruncate", "flock",
    "clone", "clone3", "fork", "vfork", "wait4", "kill", "tgkill", "pidfd_open",
    "pidfd_send_signal", "connect", "sendto", "sendmsg", "shutdown",
    "rt_sigaction",  # start sets and restores its SIGTERM and SIGHUP handlers
)  # fmt: skip


class GuestFiles(Protocol):
    @property
    def kernel(self) -> Path: ...

    @property
    def initrd(self) -> Path: ...


# --- the operations ---------------------------------------------------------------------------

Kind = Literal[
    "create",
    "start",
    "stop",
    "delete",
    "resize",
    "snapshot",
    "set",
    "exec",
    "copy-out",
    "copy-in",
    "ssh",
]
GUEST_KINDS = ("exec", "copy-out", "copy-in", "ssh")  # see guest_ops


@dataclass(frozen=True)
class Operation:
    key: str
    kind: Kind
    exists_before: bool = True
    running_before: bool = False
    force: bool = False  # stop --force, delete --force
    keeps_disk: bool = False  # delete without --force
    set_before: bool = False  # a change made with set while it ran waits for this start

    def argv(self, name: str, guest: GuestFiles) -> list[str]:
        if self.kind == "create":
            return create_args(name, guest)
        if self.kind == "start":
            return start_args(name)
        if self.kind in ("stop", "delete"):
            return [self.kind, name, *(["--force"] if self.force else [])]
        if self.kind == "resize":
            return ["resize", name, "--disk", str(GROWN_MIB)]
        if self.kind == "set":
            return set_args(name)
        if self.kind in GUEST_KINDS:
            return guest_ops.argv(self.kind, name)
        return ["snapshot", name, SNAPSHOT]


OPERATIONS: dict[str, Operation] = {
    op.key: op
    for op in (
        Operation("create", "create", exists_before=False),
        Operation("start", "start"),
        Operation("stop", "stop", running_before=True),
        Operation("stop-force", "stop", running_before=True, force=True),
        Operation("delete", "delete", keeps_disk=True),
        Operation("delete-force", "delete", force=True),
        Operation("delete-force-running", "delete", force=True, running_before=True),
        Operation("resize", "resize"),
        Operation("snapshot", "snapshot"),
        Operation("snapshot-live", "snapshot", running_before=True),
        Operation("set", "set"),
        Operation("set-running", "set", running_before=True),
        Operation("start-after-set", "start", set_before=True),
        Operation("exec", "exec", running_before=True),
        Operation("copy-out", "copy-out", running_before=True),
        Operation("copy-in", "copy-in", running_before=True),
        Operation("ssh", "ssh", running_before=True),
    )
}


def create_args(name: str, guest: GuestFiles) -> list[str]:
    return [
        "create", name, "--cpus", "1", "--memory", "192", "--disk", str(DISK_MIB),
        "--kernel", str(guest.kernel), "--initrd", str(guest.initrd),
        "--append", APPEND,
    ]  # fmt: skip


def start_args(name: str) -> list[str]:
    return ["start", name, "--wait-for", READY, "--timeout", "120"]


# What `set` changes, all at once: the definition before and after, as config.json has it.
# (One CPU throughout: a TCG guest with two on a loaded machine sometimes hangs in early boot.)
SET_BEFORE = {"memory": 192, "disk_size": DISK_MIB, "append": APPEND}
SET_AFTER = {"memory": 224, "disk_size": GROWN_MIB, "append": f"{APPEND} clan.set=1"}


def set_args(name: str) -> list[str]:
    return [
        "set", name, "--memory", "224", "--disk", str(GROWN_MIB), "--append", SET_AFTER["append"],
    ]  # fmt: skip


def _settings(path: Path) -> dict[str, Any] | None:
    data = read_json(path)
    if not isinstance(data, dict):
        return None
    return {key: data.get(key) for key in SET_BEFORE}


def check_set_whole(state_dir: Path, name: str) -> list[str]:
    """7. A change is applied whole or not at all: the definition has every value of the
    set or none, and a change that waits for the next start
    (next.json) has all of them; the disk is as large as the definition says."""
    vm = state_dir / "vms" / name
    found = []
    before, after = SET_BEFORE, SET_AFTER
    now = _settings(vm / "config.json")
    if now not in (before, after):
        found.append(f"vms/{name}/config.json is half changed: {now}")
    waiting = vm / "next.json"
    if waiting.exists() and _settings(waiting) != after:
        found.append(f"vms/{name}/next.json waits with {_settings(waiting)}, not {after}")
    disk = vm / "disk.qcow2"
    if now is not None and disk.exists() and image_mib(disk) != now["disk_size"]:
        found.append(f"the disk is {image_mib(disk)} MiB, the definition says {now}")
    return found


def check_set_after(state_dir: Path, name: str) -> list[str]:
    """7, once the next commands ran (a set again, a start): the whole change is there and
    nothing waits any more."""
    vm = state_dir / "vms" / name
    now = _settings(vm / "config.json")
    found = [] if now == SET_AFTER else [f"the definition is {now}, not the set's {SET_AFTER}"]
    if (vm / "next.json").exists():
        found.append(f"vms/{name}/next.json still waits: {_settings(vm / 'next.json')}")
    return found


def setup(runner: Runner, op: Operation, guest: GuestFiles, name: str = NAME) -> None:
    """The state OP starts from: nothing, a stopped VM with marked disk, it running, or
    stopped with a change set while it ran."""
    if not op.exists_before:
        return
    if op.kind in GUEST_KINDS:

        def create() -> None:
            runner.ok(*create_args(name, guest))
            write_marker(runner.state_dir / "vms" / name / "disk.qcow2")

        guest_ops.setup(runner, op.kind, name, create)
        return
    runner.ok(*create_args(name, guest))
    write_marker(runner.state_dir / "vms" / name / "disk.qcow2")
    if op.running_before or op.set_before:
        runner.ok(*start_args(name))
    if op.set_before:
        runner.ok(*set_args(name))
        runner.ok("stop", name, "--force")


# --- kill points ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    """A kill point named by what it hits, resolved against a profile to (syscall, N).

    AT is "first", "middle" or "last" of the calls of SYSCALLS whose strace line matches the
    regular expression MATCH and that come after the first call (of any syscall) matching
    AFTER, so the point follows the code when calls are added or removed. With ON (a file
    in the command's working directory), only the calls on that file count: a file's reads
    are found again however many reads of other descriptors (a pipe's) come between them.
    """

    op: str
    syscalls: tuple[str, ...]
    at: Literal["first", "middle", "last"] = "first"
    match: str | None = None
    after: str | None = None
    signal: str = "SIGKILL"
    label: str = ""
    on: str | None = None

    @property
    def id(self) -> str:
        what = self.label or f"{self.syscalls[0]}-{self.at}"
        return f"{self.op}:{what}" + ("" if self.signal == "SIGKILL" else f":{self.signal}")

    def resolve(self, calls: Sequence[Call]) -> tuple[Fault, Call] | None:
        seen: dict[str, int] = {}
        armed = self.after is None
        candidates: list[tuple[Fault, Call]] = []
        for call in calls:
            if self.on is not None and f"/{self.on}>" not in call.text:
                continue
            seen[call.name] = seen.get(call.name, 0) + 1
            if not armed:
                armed = self.after is not None and re.search(self.after, call.text) is not None
                continue
            if call.name in self.syscalls and (
                self.match is None or re.search(self.match, call.text)
            ):
                fault = Fault(call.name, seen[call.name], self.signal, path=self.on)
                candidates.append((fault, call))
        if not candidates:
            return None
        index = {"first": 0, "middle": (len(candidates) - 1) // 2, "last": -1}[self.at]
        return candidates[index]

    def recognises(self, calls: Sequence[Call], fault: Fault) -> bool:
        """Whether FAULT hit the call this point is named for in CALLS, the log of a faulted
        run traced like the profile. It may not: the calls before it vary between runs when
        a polling loop takes another turn, and then the point tested something else."""
        hits = nth_calls(calls, fault.syscall, fault.n)
        if not hits:
            return False
        index = next(i for i, call in enumerate(calls) if call is hits[0])
        if self.match is not None and not re.search(self.match, calls[index].text):
            return False
        return self.after is None or any(re.search(self.after, c.text) for c in calls[:index])


# --- one scenario -----------------------------------------------------------------------------


@dataclass
class Outcome:
    op: Operation
    fault: Fault | None
    run: FaultRun
    state_dir: Path
    violations: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def report(self) -> str:
        lines = [self.run.summary(), f"  state dir: {self.state_dir}"]
        if self.violations:
            lines.append("violations:")
            lines += [f"  - {v}" for v in self.violations]
        lines.append("what the harness ran afterwards:")
        lines += [f"  {s}" for s in self.steps]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "operation": self.op.key,
            "fault": asdict(self.fault) if self.fault else None,
            "hits": self.run.hits,
            "exit": self.run.exit_words(),
            "violations": self.violations,
            "steps": self.steps,
        }


class _Check:
    """Collects an outcome's violations and the commands run after the fault."""

    def __init__(self, runner: Runner, outcome: Outcome) -> None:
        self.runner = runner
        self.outcome = outcome
        self.context = "after the kill"
        self.failed = False

    def add(self, invariant: int, found: Iterable[str]) -> None:
        for text in found:
            self.outcome.violations.append(
                f"[{self.context}] invariant {invariant} ({INVARIANTS[invariant]}): {text}"
            )

    def cmd(self, *args: str) -> Result:
        began = time.monotonic()
        result = self.runner.run(*args)
        seconds = time.monotonic() - began
        if result.code == 0:
            first = (result.out.strip() or result.err.strip()).splitlines()[:1]
        else:
            first = result.err.strip().splitlines()[-1:]
        self.outcome.steps.append(
            f"$ clan-vm-manager {shlex.join(args)} -> {result.code} in {seconds:.1f}s"
            + (f"  ({first[0][:160]})" if first else "")
        )
        return result

    def must(self, *args: str) -> bool:
        """A follow-up that has to work (invariant 3); later ones are skipped once one fails."""
        if self.failed:
            return False
        result = self.cmd(*args)
        if result.code != 0:
            self.failed = True
            self.add(3, [result.line()])
            return False
        return True


def _settle(state_dir: Path, name: str, wait_qemu: bool) -> None:
    """Let what the killed command set in motion finish: an orphaned qemu-img, a guest
    that already got the power button."""
    deadline = time.monotonic() + 15
    while processes(state_dir, ("qemu-img",)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if wait_qemu:
        deadline = time.monotonic() + 2
        while name in qemu_by_vm(state_dir) and time.monotonic() < deadline:
            time.sleep(0.1)


def _effects(state_dir: Path, name: str, op: Operation, was_running: bool) -> list[tuple[str, str]]:
    """Which operation took effect (it needs its history event), judged from reality."""
    exists = vm_exists(state_dir, name)
    runs = name in qemu_by_vm(state_dir)
    disk = state_dir / "vms" / name / "disk.qcow2"
    if op.kind == "create" and exists:
        return [("create", f"the VM exists (vms/{name}/config.json)")]
    if op.kind == "start" and runs and not op.set_before:
        return [("start", "the VM's QEMU runs")]
    if op.kind == "stop" and was_running and not runs:
        return [("stop", "the VM's QEMU is gone")]
    if op.kind == "delete" and not exists:
        return [("delete", f"the VM is gone (no vms/{name}/config.json)")]
    if op.kind == "resize" and disk.exists() and image_mib(disk) == GROWN_MIB:
        return [("resize", f"the disk is now {GROWN_MIB} MiB")]
    if op.kind == "snapshot" and disk.exists() and SNAPSHOT in image_snapshots(disk):
        return [("snapshot", f"the disk has snapshot '{SNAPSHOT}'")]
    vm = state_dir / "vms" / name
    applied = _settings(vm / "config.json") == SET_AFTER
    if op.kind == "set" and (applied or (vm / "next.json").exists()):
        return [("set", "the definition or the change waiting for the next start has it")]
    if op.kind == "start" and op.set_before:
        effects = [("start", "the VM's QEMU runs")] if runs else []
        return effects + ([("set", "the change set while it ran is applied")] if applied else [])
    return []


def _follow_up(
    check: _Check,
    op: Operation,
    name: str,
    guest: GuestFiles,
    offset: int,
    listed: Mapping[str, Mapping[str, Any]],
) -> None:
    """The natural next commands after the kill (invariant 3)."""
    state_dir = check.runner.state_dir
    exists = vm_exists(state_dir, name)
    status = (listed.get(name) or {}).get("state")

    def stop_or_cycle() -> None:
        if status in ACTIVE:
            if not op.running_before:
                # The killed command booted it, and a guest still booting ignores the power
                # button: let it get ready first (a user would see it booting, too).
                wait_console(state_dir, name, READY, offset, timeout=60)
            check.must("stop", name)
        elif check.must(*start_args(name)):
            check.must("stop", name)

    if op.kind == "create":
        if exists:
            stop_or_cycle()
        else:
            check.must(*create_args(name, guest))
    elif op.kind in ("start", "stop"):
        stop_or_cycle()
        if op.set_before:  # whether the killed start applied it or the next one did
            check.add(7, check_set_after(state_dir, name))
    elif op.kind == "delete":
        if exists and not check.must(*op.argv(name, guest)):
            return
        # What the delete left stays until the name is created again, if ever: look now.
        check.add(4, check_leftovers(state_dir, [name]))
        check.must(*create_args(name, guest))
    elif op.kind in GUEST_KINDS:
        check.add(4, guest_ops.check_after(check.runner, op.kind, name))  # after list --json
        guest_ops.follow_up(check.must, op.kind, name)
    elif op.kind == "resize":
        check.must("resize", name, "--disk", str(GROWN_MIB))
    elif op.kind == "set":
        # Set again; a change that waits is applied by the next start.
        if check.must(*set_args(name)) and op.running_before:
            check.must("stop", name)
            check.must(*start_args(name))
            check.add(7, check_set_after(state_dir, name))
            check.must("stop", name)
        elif not op.running_before:
            check.add(7, check_set_after(state_dir, name))
    elif op.kind == "snapshot":
        if op.running_before and status not in ACTIVE and not check.must(*start_args(name)):
            return
        if not check.must("snapshots", name, "--json"):
            return
        disk = state_dir / "vms" / name / "disk.qcow2"
        if SNAPSHOT not in image_snapshots(disk) and not check.must("snapshot", name, SNAPSHOT):
            return
        if op.running_before:
            check.must("stop", name)
        else:
            check.must("revert", name, SNAPSHOT)


def run_scenario(
    runner: Runner,
    op: Operation,
    fault: Fault | None,
    guest: GuestFiles,
    name: str = NAME,
    *,
    trace: Iterable[str] = (),
    scope: Scope | None = None,
) -> Outcome:
    """Set OP up, run it with FAULT, then check every invariant twice: right after the
    kill (with one ``list --json`` to reconcile) and after the natural next commands."""
    state_dir = runner.state_dir
    setup(runner, op, guest, name)
    was_running = name in qemu_by_vm(state_dir)
    before, problem = history_events(runner, name)
    if problem:
        raise HarnessError(f"history unreadable before the fault: {problem}")
    offset = console_size(state_dir, name)
    run = runner.traced(op.argv(name, guest), fault, trace=trace, scope=scope)
    outcome = Outcome(op, fault, run, state_dir)
    check = _Check(runner, outcome)
    if run.timed_out:
        check.add(3, [f"the faulted command itself did not finish: {run.summary()}"])
    _settle(state_dir, name, op.running_before and op.kind in ("stop", "delete"))

    found, listed = check_list(runner)
    outcome.steps.append("$ clan-vm-manager list --json (reconciles)")
    check.add(2, found)
    check.add(1, check_untracked_qemu(state_dir, listed))
    effects = _effects(state_dir, name, op, was_running)
    check.add(6, check_history(runner, name, len(before), effects))
    if op.exists_before and op.kind != "ssh":  # the Debian guest's disk is its root fs
        check.add(5, check_disk_data(state_dir, name, keeps_disk=op.keeps_disk))
    if op.kind == "set" or op.set_before:
        check.add(7, check_set_whole(state_dir, name))

    check.context = "after the next commands"
    _follow_up(check, op, name, guest, offset, listed)
    _settle(state_dir, name, False)
    check.add(4, check_leftovers(state_dir, [name]))
    found, listed = check_list(runner)
    check.add(2, found)
    check.add(1, check_untracked_qemu(state_dir, listed))
    return outcome


def profile(
    runner: Runner, op: Operation, guest: GuestFiles, name: str = NAME, scope: Scope = "cli"
) -> Outcome:
    """An unhindered run of OP, traced: its calls (``outcome.run.calls``; the main thread's
    for scope ``cli``) are what kill points are chosen from, and its violations are those no
    kill caused."""
    try:
        outcome = run_scenario(runner, op, None, guest, name, trace=PROFILE_SYSCALLS, scope=scope)
    finally:
        cleanup(runner.state_dir)
    if outcome.run.returncode != 0:
        raise HarnessError(f"the unhindered run failed: {outcome.run.summary()}: {outcome.run.err}")
    return outcome
