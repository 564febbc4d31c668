"""Append-only event log: one JSON object per line, never rewritten.

An event of a VM on a libvirt host says which host ("..., on hv1"): the host is read
from the VM's definition in the same state directory, so the local history tells
where each thing happened.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import ClanVMError, InvalidInput, StateConflict
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state.store import host_in


@dataclass(frozen=True)
class VMEvent:
    timestamp: str  # ISO 8601, UTC
    vm: str
    action: str
    user: str
    details: str
    result: str = "ok"  # "ok" or "failed"


_REQUIRED = {"timestamp", "vm", "action", "user", "details"}


def now() -> str:
    from datetime import UTC, datetime  # lazy: list and status only read the record

    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _user() -> str:
    try:
        import getpass  # lazy: only a command that records an event needs it

        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def append(log: Path, vm: str, action: str, details: str = "", result: str = "ok") -> VMEvent:
    """Append one event as one whole line, or nothing (OSError)."""
    host = host_in(log.parent, vm)
    if host is not None:
        where = "on " + host.split("?", 1)[0]  # a URI's parameters (key files) are noise here
        details = f"{details}, {where}" if details else where
    event = VMEvent(now(), vm, action, _user(), details, result)
    line = json.dumps(asdict(event), ensure_ascii=False).encode() + b"\n"
    fd = os.open(log, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # Under a lock, one write of a whole line: concurrent writers never interleave.
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a torn last line (a crash mid-write) stays alone, not glued
        try:
            written = os.write(fd, line)
        except OSError:
            os.ftruncate(fd, size)
            raise
        if written != len(line):  # a full disk: take the partial line back
            os.ftruncate(fd, size)
            raise OSError(errno.ENOSPC, f"only {written} of {len(line)} bytes written")
    finally:
        os.close(fd)
    return event


def record(
    log: Path,
    vm: str,
    action: str,
    details: str = "",
    result: str = "ok",
    warn: Notify = notice,
) -> None:
    """Append an event for an operation that already happened: a failure to write it is a
    warning, since the operation itself took effect."""
    try:
        append(log, vm, action, details, result)
    except OSError as error:
        warn(
            f"warning: the history was not updated ({action} of '{vm}'): {error.strerror or error}"
        )


def _parse(line: bytes) -> VMEvent | None:
    try:
        data: Any = json.loads(line)
    except ValueError:
        return None  # a torn line after a crash is skipped, not fatal
    if not isinstance(data, dict) or not _REQUIRED <= set(data) <= _REQUIRED | {"result"}:
        return None
    if not all(isinstance(value, str) for value in data.values()):
        return None
    return VMEvent(**data)


def read(log: Path, vm: str | None = None, limit: int | None = None) -> list[VMEvent]:
    """Events newest first, optionally for one VM and at most LIMIT of them."""
    try:
        raw = log.read_bytes()
    except FileNotFoundError:
        return []
    events = [e for e in map(_parse, raw.splitlines()) if e and (vm is None or e.vm == vm)]
    events.reverse()
    return events if limit is None else events[:limit]


def recorded_since(log: Path, vm: str, action: str, since: float) -> bool:
    """Whether an ACTION event of VM was recorded at or after SINCE (seconds, epoch)."""
    from datetime import datetime

    for event in read(log, vm):
        try:
            when = datetime.fromisoformat(event.timestamp).timestamp()
        except ValueError:
            continue
        if when < since - 0.001:  # newest first: the rest is older still
            return False
        if event.action == action:
            return True
    return False


@contextlib.contextmanager
def failures_recorded(log: Path, vm: str, action: str) -> Iterator[None]:
    """Record an ACTION of VM that failed. A request refused as wrong (exit code 2) or
    in the wrong state changed nothing and is no event."""
    try:
        yield
    except (InvalidInput, StateConflict):
        raise
    except (ClanVMError, OSError) as error:
        record(log, vm, action, str(error), "failed")
        raise
