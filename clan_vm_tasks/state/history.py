"""Append-only event log: one JSON object per line, never rewritten."""

from __future__ import annotations

import fcntl
import getpass
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VMEvent:
    timestamp: str  # ISO 8601, UTC
    vm: str
    action: str
    user: str
    details: str
    result: str = "ok"  # "ok" or "failed"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def record(log: Path, vm: str, action: str, details: str = "", result: str = "ok") -> VMEvent:
    event = VMEvent(now(), vm, action, _user(), details, result)
    line = json.dumps(asdict(event), ensure_ascii=False).encode() + b"\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # One write of a whole line under a lock: concurrent writers never interleave.
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
    finally:
        os.close(fd)
    return event


def _parse(line: bytes) -> VMEvent | None:
    try:
        data: Any = json.loads(line)
        return VMEvent(**data) if isinstance(data, dict) else None
    except (ValueError, TypeError):
        return None  # a torn last line after a crash is skipped, not fatal


def read(log: Path, vm: str | None = None, limit: int | None = None) -> list[VMEvent]:
    """Events newest first, optionally for one VM and at most LIMIT of them."""
    try:
        raw = log.read_bytes()
    except FileNotFoundError:
        return []
    events = [e for e in map(_parse, raw.splitlines()) if e and (vm is None or e.vm == vm)]
    events.reverse()
    return events if limit is None else events[:limit]
