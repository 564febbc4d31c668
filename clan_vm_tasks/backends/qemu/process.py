"""QEMU processes: launch, identity and signals.

A pid alone proves nothing: it may have been recycled. A process is ours only
if its /proc start time matches the one recorded at launch and its command
line names our pidfile. Signals go through a pidfd opened before that check,
so the process checked is the process signalled. A helper beside QEMU (virtiofsd)
has no pidfile: its command line names it in another way (``end_helpers``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clan_vm_tasks.errors import ClanVMError

if TYPE_CHECKING:
    import subprocess  # lazy below: status and list only look at processes


@dataclass(frozen=True)
class ProcessId:
    pid: int
    start: int  # field 22 of /proc/PID/stat


def start_time(pid: int) -> int | None:
    """The start time of a live process, or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses; fields follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return raw.decode(errors="replace").split("\0")


def is_ours(proc: ProcessId, pidfile: Path) -> bool:
    return start_time(proc.pid) == proc.start and _runs_with(_cmdline(proc.pid), pidfile)


def _runs_with(argv: list[str], pidfile: Path) -> bool:
    """Whether ARGV is a QEMU of ours: it writes PIDFILE (another program that merely names
    the path, a tracer or an editor, is not)."""
    return any(a == "-pidfile" and b == str(pidfile) for a, b in itertools.pairwise(argv))


Ours = Callable[[list[str]], bool]  # whether a command line is one of ours


@contextlib.contextmanager
def _pidfd(proc: ProcessId, ours: Ours) -> Iterator[int | None]:
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        yield None
        return
    try:
        # Checked after opening: from here on the fd cannot refer to a recycled pid.
        yield fd if start_time(proc.pid) == proc.start and ours(_cmdline(proc.pid)) else None
    finally:
        os.close(fd)


def _writes(pidfile: Path) -> Ours:
    return lambda argv: _runs_with(argv, pidfile)


def _signal(fd: int, sig: signal.Signals) -> bool:
    try:
        signal.pidfd_send_signal(fd, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _exits_within(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    # A pidfd turns readable when the process exits, even one we cannot reap.
    return bool(poller.poll(max(timeout, 0) * 1000))


def send_signal(proc: ProcessId, pidfile: Path, sig: signal.Signals) -> bool:
    """Signal our QEMU; False (and nothing sent) when that process is gone or not ours."""
    with _pidfd(proc, _writes(pidfile)) as fd:
        return fd is not None and _signal(fd, sig)


def wait_gone(proc: ProcessId, pidfile: Path, timeout: float) -> bool:
    """Wait until our process has exited; True if it did within TIMEOUT seconds."""
    with _pidfd(proc, _writes(pidfile)) as fd:
        return fd is None or _exits_within(fd, timeout)


def read_pidfile(pidfile: Path) -> ProcessId | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    start = start_time(pid)
    return ProcessId(pid, start) if start is not None else None


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line)


def launch_daemon(
    argv: list[str], pidfile: Path, log: Path, fds: tuple[int, ...] = (), timeout: float = 60.0
) -> ProcessId:
    """Run QEMU with -daemonize: it returns once the VM is set up (sockets listening). FDS
    are passed on (the shared directories its arguments name as /proc/self/fd/N)."""
    import subprocess

    pidfile.unlink(missing_ok=True)
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            pass_fds=fds,
        )
    except FileNotFoundError:
        raise ClanVMError(f"{argv[0]} not found: install QEMU (Debian: qemu-system-x86)") from None
    except subprocess.TimeoutExpired:
        raise ClanVMError(f"QEMU did not finish starting within {timeout:.0f}s") from None
    log.write_text(result.stderr)
    if result.returncode != 0:
        raise ClanVMError(f"QEMU failed to start: {_tail(result.stderr) or 'no message'}")
    try:
        pidfile.read_bytes()
    except OSError as error:  # QEMU runs, but which process it is cannot be told
        raise ClanVMError(f"cannot read QEMU's pidfile {pidfile}: {error.strerror}") from None
    proc = read_pidfile(pidfile)
    if proc is None:
        raise ClanVMError(f"QEMU exited right after starting: {_tail(result.stderr)}")
    return proc


def launch_foreground(
    argv: list[str], log: Path, fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """Run QEMU as our child in its own session (the terminal's Ctrl-C reaches us, not it),
    with FDS passed on."""
    import subprocess

    try:
        with log.open("wb") as err:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
                pass_fds=fds,
            )
    except FileNotFoundError:
        raise ClanVMError(f"{argv[0]} not found: install QEMU (Debian: qemu-system-x86)") from None


def wait_for_pidfile(pidfile: Path, child: subprocess.Popen[bytes], timeout: float) -> ProcessId:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = read_pidfile(pidfile)
        if proc is not None and proc.pid == child.pid:
            return proc
        if child.poll() is not None:
            raise ClanVMError(f"QEMU exited with status {child.returncode} while starting")
        time.sleep(0.01)
    raise ClanVMError(f"QEMU wrote no pidfile within {timeout:.0f}s")


def _owned(pid: int) -> bool:
    """Whether PID runs as this user: anyone can give a process a command line that looks
    like one of ours."""
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.geteuid()
    except OSError:
        return False


def _scan(ours: Ours) -> list[ProcessId]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and ours(_cmdline(int(entry))) and _owned(int(entry)):
            start = start_time(int(entry))
            if start is not None:
                found.append(ProcessId(int(entry), start))
    return found


def writing(pidfile: Path) -> list[ProcessId]:
    """Live QEMU processes that write PIDFILE: ours, even when we lost their pid."""
    return _scan(_writes(pidfile))


def end_helpers(ours: Ours, grace: float) -> list[int]:
    """End the live helpers (virtiofsd) whose command line OURS recognises: they get GRACE
    seconds to exit by themselves, then SIGKILL. Returns the pids of any that survived."""
    survivors = []
    deadline = time.monotonic() + grace
    for proc in _scan(ours):
        with _pidfd(proc, ours) as fd:
            if fd is None or _exits_within(fd, deadline - time.monotonic()):
                continue
            if _signal(fd, signal.SIGKILL) and not _exits_within(fd, 5.0):
                survivors.append(proc.pid)
    return survivors


def argv_of(proc: ProcessId) -> list[str]:
    return _cmdline(proc.pid)
