"""The exhaustive fault sweep: kill the CLI at every N of every interesting system call.

    .venv/bin/python bench/fault_sweep.py [--ops create,delete] [--syscalls rename,write]
        [--signals SIGKILL,SIGINT] [--every K] [--limit M] [--jobs J] [--source DIR]
        [--scope cli|threads|tree] [--json FILE]

For each operation it first runs it unhindered under strace to count its calls (the table
of counts is printed), then runs it once per kill point (syscall, N) in a fresh state
directory, checks the invariants of ``tests/faults/invariants.py`` and prints one row per
point: operation, syscall, N, the call that was hit, how the command ended and what was
found. A summary at the end groups the findings by operation, invariant and what was
seen, with the kill points that showed each. ``openat`` is only swept at the writable
opens (the others read Python modules). ``--source`` tests another checkout of the
package, e.g. ``git archive HEAD | tar -x -C /tmp/head`` while the working tree changes.

The sweep boots real VMs and takes a while: ``create`` and the deletes a few minutes,
``start``, ``stop`` and ``snapshot-live`` longer (each point boots the guest). Use
``--every``/``--limit`` for a partial sweep, ``--jobs 2`` on two cores.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples import guest as example_guest  # noqa: E402
from tests.faults.observe import cleanup  # noqa: E402
from tests.faults.runner import HarnessError, Runner  # noqa: E402
from tests.faults.scenarios import OPERATIONS, Operation, Outcome, profile, run_scenario  # noqa: E402
from tests.faults.strace import WRITABLE_OPEN, Call, Fault, FaultRun, sweep_faults  # noqa: E402

DEFAULT_OPS = "create,delete,delete-force,start"
DEFAULT_SYSCALLS = (
    "rename,renameat2,link,linkat,unlink,unlinkat,rmdir,mkdir,openat,write,fsync,flock,"
    "clone,fork,vfork,wait4,kill,pidfd_open,pidfd_send_signal,connect,sendto"
)
_PRINT = threading.Lock()


@dataclass(frozen=True)
class GuestFiles:
    kernel: Path
    initrd: Path


def guest_files() -> GuestFiles:
    out = ROOT / ".cache" / "guest"
    if not ((out / "vmlinuz").is_file() and (out / "initrd").is_file()):
        example_guest.build(out)
    return GuestFiles(out / "vmlinuz", out / "initrd")


def say(text: str) -> None:
    with _PRINT:
        print(text, flush=True)


def short_hit(outcome: Outcome) -> str:
    if not outcome.run.hits:
        return "(never fired)"
    text = re.sub(r"\s+=\s+\?$", "", outcome.run.hits[0])
    text = re.sub(r"\\\"", '"', text)
    return text if len(text) <= 90 else text[:87] + "..."


_INVARIANT = re.compile(r"^\[(?P<phase>[^]]*)\] invariant (?P<n>\d) \([^)]*\): (?P<what>.*)$")


def condensed(violation: str) -> tuple[str, str]:
    """(invariant number, what was seen) with pids, numbers and paths made comparable."""
    match = _INVARIANT.match(violation)
    if not match:
        return "?", violation
    what = match.group("what")
    what = re.sub(r"/\S*/state/", "$STATE/", what)
    what = re.sub(r"\b\d{3,}\b", "#", what)
    what = re.sub(r"\d{8}T\d{6}", "#", what)
    return match.group("n"), what


def _point_order(point: str) -> tuple[str, int, str]:
    match = re.match(r"([a-z_0-9]+)#(\d+)(.*)", point)
    return (match.group(1), int(match.group(2)), match.group(3)) if match else (point, 0, "")


class Sweep:
    def __init__(self, args: argparse.Namespace, workdir: Path, guest: GuestFiles) -> None:
        self.args = args
        self.workdir = workdir
        self.guest = guest
        self.source: Path | None = Path(args.source).resolve() if args.source else None
        self.results: list[Outcome] = []
        self.profiles: dict[str, Outcome] = {}

    def runner(self) -> Runner:
        state = Path(tempfile.mkdtemp(prefix="point-", dir=self.workdir)) / "state"
        return Runner(state, pythonpath=self.source)

    def finish(self, runner: Runner) -> None:
        cleanup(runner.state_dir)
        shutil.rmtree(runner.state_dir.parent, ignore_errors=True)

    def profile(self, op: Operation) -> list[Call]:
        runner = self.runner()
        try:
            outcome = profile(runner, op, self.guest, scope=self.args.scope)
        finally:
            self.finish(runner)
        self.profiles[op.key] = outcome
        calls = outcome.run.calls
        counted = Counter(c.name for c in calls)
        writable = sum(1 for c in calls if c.name == "openat" and re.search(WRITABLE_OPEN, c.text))
        parts = [f"{name} {n}" for name, n in sorted(counted.items())]
        say(f"\n== {op.key}: `{' '.join(op.argv('NAME', self.guest))[:80]}`")
        say(f"   calls ({self.args.scope} scope): " + ", ".join(parts))
        say(f"   openat that can write: {writable}")
        if outcome.violations:
            say("   violations WITHOUT any fault:")
            for v in outcome.violations:
                say(f"     - {v}")
        return calls

    def point(self, op: Operation, fault: Fault) -> Outcome:
        runner = self.runner()
        try:
            try:
                outcome = run_scenario(runner, op, fault, self.guest)
            except HarnessError as error:
                run = FaultRun((), fault, -1, "", str(error), [], [], False, 0.0)
                outcome = Outcome(op, fault, run, runner.state_dir, [f"[setup] {error}"])
        finally:
            self.finish(runner)
        return outcome

    def row(self, outcome: Outcome) -> str:
        fault = outcome.fault
        assert fault is not None
        found = sorted({"inv{} {}".format(*condensed(v)) for v in outcome.violations})
        what = "; ".join(found) if found else "ok"
        sig = "" if fault.signal == "SIGKILL" else f" {fault.signal}"
        return (
            f"{outcome.op.key:<21} {fault.syscall + sig:<18} {fault.n:>4}  "
            f"{short_hit(outcome):<90}  {outcome.run.exit_words():<18}  {what}"
        )

    def run(self, ops: Sequence[Operation]) -> None:
        syscalls = [s for s in self.args.syscalls.split(",") if s]
        signals = [s for s in self.args.signals.split(",") if s]
        jobs: list[tuple[Operation, Fault]] = []
        for op in ops:
            calls = self.profile(op)
            for sig in signals:
                points = sweep_faults(calls, syscalls, sig, self.args.scope)
                points = points[:: self.args.every]
                if self.args.limit:
                    points = points[: self.args.limit]
                jobs += [(op, fault) for fault, _ in points]
        say(f"\n{len(jobs)} kill points, {self.args.jobs} at a time\n")
        say(
            f"{'operation':<21} {'syscall':<18} {'N':>4}  {'the call that was hit':<90}  "
            f"{'the command':<18}  what was found"
        )
        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
            futures = [pool.submit(self.point, op, fault) for op, fault in jobs]
            for future in as_completed(futures):
                outcome = future.result()
                self.results.append(outcome)
                say(self.row(outcome))
        say(f"\n{len(jobs)} kill points in {time.monotonic() - began:.0f}s")

    def summary(self) -> None:
        groups: dict[tuple[str, str, str], list[str]] = {}
        for outcome in self.results:
            assert outcome.fault is not None
            where = f"{outcome.fault.syscall}#{outcome.fault.n}"
            if outcome.fault.signal != "SIGKILL":
                where += f"({outcome.fault.signal})"
            for violation in outcome.violations:
                n, what = condensed(violation)
                points = groups.setdefault((outcome.op.key, n, what), [])
                if where not in points:
                    points.append(where)
        say("\n== findings, by operation and invariant")
        if not groups:
            say("   none")
        for (op, n, what), points in sorted(groups.items()):
            points.sort(key=_point_order)
            say(f"{op:<21} inv{n}  {what}\n{'':<27}at {', '.join(points)}")
        ordered = sorted(self.results, key=lambda o: (o.op.key, str(o.fault)))
        clean = sum(1 for o in ordered if o.ok)
        say(f"\n{clean} of {len(ordered)} kill points without a finding")

    def dump(self, path: Path) -> None:
        data = {
            "profiles": {
                key: {"counts": Counter(c.name for c in o.run.calls), "violations": o.violations}
                for key, o in self.profiles.items()
            },
            "points": [o.as_dict() for o in self.results],
        }
        path.write_text(json.dumps(data, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default=DEFAULT_OPS, help=f"of: {', '.join(OPERATIONS)}")
    parser.add_argument("--syscalls", default=DEFAULT_SYSCALLS)
    parser.add_argument("--signals", default="SIGKILL", help="SIGKILL, SIGINT, SIGTERM, SIGHUP")
    parser.add_argument("--every", type=int, default=1, help="only every K-th kill point")
    parser.add_argument("--limit", type=int, default=0, help="at most M kill points per op")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--scope", choices=["cli", "threads", "tree"], default="cli")
    parser.add_argument("--source", help="a checkout of the package to test instead")
    parser.add_argument("--json", help="write every outcome here")
    args = parser.parse_args(argv)
    if shutil.which("strace") is None:
        parser.error("strace is not installed")
    unknown = [k for k in args.ops.split(",") if k not in OPERATIONS]
    if unknown:
        parser.error(f"unknown operations {unknown}; known: {list(OPERATIONS)}")
    ops = [OPERATIONS[k] for k in args.ops.split(",")]
    if args.scope == "tree" and any(op.kind == "start" for op in ops):
        parser.error("--scope tree would trace the daemonized QEMU; use threads for start")
    with tempfile.TemporaryDirectory(prefix="fault-sweep-") as tmp:
        sweep = Sweep(args, Path(tmp), guest_files())
        try:
            sweep.run(ops)
        finally:
            sweep.summary()
            if args.json:
                sweep.dump(Path(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
