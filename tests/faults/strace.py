"""The recipe: run a command under strace and deliver a signal at its N-th call of a syscall.

The recipe (strace 6.1 on Debian 12; every point below was verified on a test machine)
-------------------------------------------------------------------------------------

One faulted run is::

    strace -qq -y -s 256 -o LOG -e signal=none -e trace=SYSCALL \\
        -e inject=SYSCALL:signal=SIGKILL:when=N -- clan-vm-manager ARGS...

*without* ``-f``. It traces only the CLI's main thread, and that thread makes every call
that changes state (files, renames, history, QMP, spawning ``qemu-img`` and QEMU; the other
threads are ``sh``'s output pumps). The N-th ``SYSCALL`` of that thread gets the signal.

Pitfalls (verified unless marked otherwise):

* **The injected syscall must be in the traced set.** With ``-e trace=none -e inject=...``
  strace 6.1 silently never injects: the command runs to the end, exits 0, and a sweep
  built that way tests nothing while every point "passes". ``strace_prefix`` always traces
  the injected syscall, and ``run_traced`` checks in the log that the N-th call happened
  (``FaultRun.fired``).
* **The ``when=N`` counter is per traced thread, not per process tree.** Under ``-f`` every
  thread and child starts counting at zero: three threads that each rename three times are
  never hit by ``when=4``, and a forked child is killed at *its own* third rename although
  its parent renamed twice before. So ``-f`` does not mean "the N-th call of the tree"; it
  arms the CLI, each ``sh`` helper thread, each ``qemu-img`` thread and (see below) QEMU's
  threads separately, and several of them can be killed in one run.
* **Plain ``-f`` follows ``qemu-system-x86_64 -daemonize`` into the daemon.** strace then
  does not exit until the VM ends (the harness would hang for the VM's lifetime), QEMU stops
  at each of its traced calls (``TracerPid`` in ``/proc/PID/status`` is strace's pid), and
  the per-thread counters arm QEMU's own threads: ``inject=write:when=5`` would kill the VM
  rather than the CLI. (After strace itself was SIGKILLed the kernel detached QEMU and it
  kept running, but nothing should rely on that.)
* ``--kill-on-exit`` does not exist in strace 6.1; it is not needed.
  ``--detach-on=execve`` (``-b execve``) exists and detaches each traced process at its
  ``execve`` (not the initial one): QEMU and ``qemu-img`` then run untraced
  (``TracerPid: 0``) and strace exits together with the CLI. Scope ``threads`` uses it.
  ``--seccomp-bpf`` is refused together with ``-b`` (strace says so and goes on without
  it); it must not be used for ``start`` anyway: the seccomp filter is inherited by QEMU
  and outlives the tracer, and a ``SECCOMP_RET_TRACE`` filter without a tracer fails the
  call with ENOSYS (seccomp(2); not tried here).
* **SIGKILL is injected on syscall entry and the call does not happen** (strace logs
  ``rename(...) = ?`` and ``+++ killed by SIGKILL +++``; the file was not renamed).
  SIGINT, SIGTERM and SIGHUP let the call complete first (``= 0``), then act: so "SIGKILL at
  rename #N" is "died just before the N-th rename", "SIGTERM at rename #N" is "just after".
  Python turns SIGINT into KeyboardInterrupt at the next bytecode; SIGTERM/SIGHUP kill it
  unless the program handles them.
* **A signal the harness inherited as ignored stays ignored in the CLI.** Under ``nohup``
  (SIGHUP) or as a background job of a non-interactive shell (SIGINT, SIGQUIT) the injected
  SIGHUP or SIGINT did nothing and every such point "passed" with exit 0. ``run_traced``
  starts strace through ``env --default-signal=HUP,INT,QUIT,TERM`` (``DEFAULT_SIGNALS``).
* strace exits with the command's status and, when the command died of a signal, kills
  itself with that signal (``subprocess`` returncode ``-9``).
* Without ``-f`` log lines have no pid prefix; with it they do. ``-y`` prints the path of
  every fd (``write(3</.../history.jsonl>, ...)``), which makes a hit self-explanatory.
* The calls this Python and glibc make: ``os.rename``/``os.replace`` -> ``rename``;
  ``os.link`` -> ``link``; ``shutil.rmtree`` -> ``unlinkat`` and ``rmdir``;
  ``Path.unlink`` -> ``unlink``; ``subprocess.run`` (QEMU, ``ip``) -> ``vfork``; ``sh``
  (``qemu-img``) -> ``clone`` (a fork), ``clone3`` (its helper threads, right after the
  fork) and usually a blocking ``wait4`` (sometimes one of sh's threads reaps the child:
  the number varies); files -> ``openat``. Most ``openat`` calls read Python modules, so
  sweeps only kill at the writable ones (``WRITABLE_OPEN``).
* An atomic write of the tool is ``openat`` of ``STATE/tmp/PID.RANDOM.tmp``, ``write``,
  ``fsync``, ``rename`` onto the target, ``fsync`` of the target's directory: the content
  shows in the ``write`` (to the temp file), the target only in the ``rename``.
* **Counts after a polling loop vary from run to run** (``connect`` and ``openat`` of
  ``/proc/PID/stat`` while QMP comes up, ``openat`` of ``console.log`` while waiting for
  the ready text): "``openat`` #N" taken from one run can hit another call in the next. A
  kill point on the first ``console.log`` read of the wait for READY hit a read of
  ``/proc/PID/stat`` instead; with more turns of the QMP wait than in the profile it lands
  there, before the VM is recorded running, and tests something else. The log of the
  faulted run says which call was really hit (reports quote it, ``KillPoint.recognises``
  checks it); a point after a polling loop needs a syscall the loop does not make.

Scopes: ``cli`` (default, no ``-f``) as above. ``threads`` is ``-f --detach-on=execve``:
also the CLI's other threads and forked children until they exec. ``tree`` is ``-f``: also
the exec'd helpers such as ``qemu-img`` (each thread with its own counter), refused for
commands that launch QEMU.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Scope = Literal["cli", "threads", "tree"]
SIGNALS = ("SIGKILL", "SIGINT", "SIGTERM", "SIGHUP")
# A signal ignored by whoever started the harness (nohup: SIGHUP; a background job of a
# non-interactive shell: SIGINT, SIGQUIT) stays ignored across exec, and an injected SIGHUP
# or SIGINT would then do nothing. env (coreutils >= 8.31) resets them before strace runs.
DEFAULT_SIGNALS = ("env", "--default-signal=HUP,INT,QUIT,TERM")
# openat calls that can change something; the others only read (mostly Python modules).
WRITABLE_OPEN = r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC"


@dataclass(frozen=True)
class Fault:
    """Deliver SIGNAL when the traced thread(s) make their N-th SYSCALL (on the file PATH
    only, when given: relative to the command's working directory)."""

    syscall: str
    n: int
    signal: str = "SIGKILL"
    scope: Scope = "cli"
    path: str | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"N counts from 1, not {self.n}")
        if self.signal not in SIGNALS:
            raise ValueError(f"unsupported signal {self.signal}")

    def __str__(self) -> str:
        where = {
            "cli": "",
            "threads": " of any CLI thread or pre-exec child",
            "tree": " of any process in the CLI's tree",
        }[self.scope]
        on = f" on {self.path}" if self.path else ""
        return f"{self.signal} at {self.syscall} #{self.n}{on}{where}"


def strace_prefix(
    log: Path, fault: Fault | None, trace: Iterable[str], scope: Scope, cwd: Path | None = None
) -> list[str]:
    """The strace command line that runs a command with FAULT (see the module docstring).
    A fault on one file counts only the calls on it (``-P``: so is the log then)."""
    names = set(trace) | ({fault.syscall} if fault else set())
    argv = ["strace", "-qq", "-y", "-s", "256", "-o", str(log), "-e", "signal=none"]
    if scope == "threads":
        argv += ["-f", "--detach-on=execve"]
    elif scope == "tree":
        argv += ["-f"]
    argv += ["-e", "trace=" + ",".join(sorted(names))]
    if fault is not None:
        argv += ["-e", f"inject={fault.syscall}:signal={fault.signal}:when={fault.n}"]
        if fault.path is not None:
            argv += ["-P", str(Path(cwd or ".", fault.path).absolute())]
    return [*argv, "--"]


# --- the log --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    pid: int | None  # None: the only traced thread (no -f)
    name: str
    text: str  # the strace line, with the state dir shown as $STATE


_LINE = re.compile(r"^(?:(\d+) +)?(.*)$")
_NAME = re.compile(r"^([a-z_0-9]+)\(")


def parse_trace(text: str, state_dir: Path | None = None) -> list[Call]:
    """The calls in a strace log, in order (signals, exits and resumed halves skipped)."""
    calls: list[Call] = []
    for raw in text.splitlines():
        match = _LINE.match(raw)
        assert match is not None  # the pattern matches every line
        body = re.sub(r"AT_FDCWD<[^>]*>", "AT_FDCWD", match.group(2))
        if state_dir is not None:
            body = body.replace(str(state_dir), "$STATE")
        name = _NAME.match(body)
        if name:
            pid = int(match.group(1)) if match.group(1) else None
            calls.append(Call(pid, name.group(1), body))
    return calls


def nth_calls(calls: Sequence[Call], syscall: str, n: int) -> list[Call]:
    """The call that got the injection in each traced thread that made N calls of SYSCALL."""
    seen: dict[int | None, int] = {}
    hit: list[Call] = []
    for call in calls:
        if call.name != syscall:
            continue
        seen[call.pid] = seen.get(call.pid, 0) + 1
        if seen[call.pid] == n:
            hit.append(call)
    return hit


def sweep_faults(
    calls: Sequence[Call],
    syscalls: Iterable[str],
    signal_name: str = "SIGKILL",
    scope: Scope = "cli",
) -> list[tuple[Fault, Call]]:
    """Every fault a traced run offers for SYSCALLS (openat: only the writable opens).

    With several traced threads (scopes ``threads`` and ``tree``) N runs up to the most
    calls one thread made; the call shown is the first thread's to reach N.
    """
    wanted = set(syscalls)
    seen: dict[tuple[int | None, str], int] = {}
    points: dict[tuple[str, int], tuple[Fault, Call]] = {}
    for call in calls:
        key = (call.pid, call.name)
        seen[key] = seen.get(key, 0) + 1
        if call.name not in wanted:
            continue
        if call.name == "openat" and not re.search(WRITABLE_OPEN, call.text):
            continue
        n = seen[key]
        points.setdefault((call.name, n), (Fault(call.name, n, signal_name, scope), call))
    return sorted(points.values(), key=lambda p: (p[0].syscall, p[0].n))


def _programs(calls: Sequence[Call]) -> dict[int | None, str]:
    """Which program each traced pid ran last (from its execve lines)."""
    found: dict[int | None, str] = {}
    for call in calls:
        if call.name == "execve" and "= -1 " not in call.text:
            match = re.match(r'execve\("([^"]*)"', call.text)
            if match:
                found[call.pid] = Path(match.group(1)).name
    return found


def _clip(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[: limit - 20] + " ... " + text[-15:]


def describe_hits(calls: Sequence[Call], fault: Fault, scope: Scope) -> list[str]:
    """The calls FAULT hit, each with who made it when more than one thread was traced."""
    programs = _programs(calls)
    first = calls[0].pid if calls else None
    hits: list[str] = []
    for call in nth_calls(calls, fault.syscall, fault.n):
        clipped = _clip(call.text)
        if scope == "cli":
            hits.append(clipped)
        elif call.pid == first:
            hits.append(f"[pid {call.pid}, the CLI] {clipped}")
        else:
            who = programs.get(call.pid, "a CLI thread or child before exec")
            hits.append(f"[pid {call.pid}, {who}] {clipped}")
    return hits


# --- one traced run -------------------------------------------------------------------------


@dataclass
class FaultRun:
    args: tuple[str, ...]  # the CLI's arguments
    fault: Fault | None
    returncode: int
    out: str
    err: str
    calls: list[Call]
    hits: list[str]  # the injected calls, described
    timed_out: bool
    seconds: float

    @property
    def fired(self) -> bool:
        return bool(self.hits)

    def exit_words(self) -> str:
        if self.timed_out:
            return "did not finish (timed out)"
        if self.returncode < 0:
            return f"killed by {signal.Signals(-self.returncode).name}"
        return f"exited {self.returncode}"

    def summary(self) -> str:
        what = f"`clan-vm-manager {shlex.join(self.args)}`"
        if self.fault is None:
            return f"{what} unhindered ({self.exit_words()})"
        if not self.fired:
            return f"{what} with {self.fault}: never fired, the command {self.exit_words()}"
        return (
            f"{what} with {self.fault}, hit {'; '.join(self.hits)} "
            f"({self.exit_words()} after {self.seconds:.1f}s)"
        )


def run_traced(
    command: Sequence[str],
    args: Sequence[str],
    fault: Fault | None,
    *,
    log: Path,
    env: Mapping[str, str],
    cwd: Path,
    state_dir: Path,
    trace: Iterable[str] = (),
    scope: Scope = "cli",
    timeout: float = 300.0,
) -> FaultRun:
    """Run COMMAND ARGS under strace with FAULT (None: only trace) and say what was hit.
    The log goes to LOG (removed afterwards); STATE_DIR is shown as ``$STATE`` in it."""
    if scope == "tree" and args and args[0] in ("start", "restart"):
        raise ValueError("scope 'tree' would trace the daemonized QEMU; use 'threads'")
    extra = {"execve"} if scope != "cli" else set()
    prefix = strace_prefix(log, fault, {*trace, *extra}, scope, cwd)
    argv = [*DEFAULT_SIGNALS, *prefix, *command, *args]
    began = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,  # a hung run is killed as a group (QEMU makes its own)
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    seconds = time.monotonic() - began
    text = log.read_text(errors="replace") if log.exists() else ""
    log.unlink(missing_ok=True)
    calls = parse_trace(text, state_dir)
    hits = describe_hits(calls, fault, scope) if fault is not None else []
    return FaultRun(tuple(args), fault, proc.returncode, out, err, calls, hits, timed_out, seconds)
