"""Temporary files the tool makes in a guest (a copy's before it is renamed into place, a
command's spooled input, a tree's archive), written ahead on the host so that what a killed
command left in the guest is removed by the next command that works there.

The guest's ``mktemp`` makes each with a name carrying a token of the command's own
(``.clan-vm-KIND.TOKEN.XXXXXXXX``), in a directory recorded beforehand under that token in
``vms/NAME/guest-temp/``, with the agent's handles the command opens on it. The record goes
once the command is done with the file (renamed into place, or removed). Sessions with an
agent take turns, so a record found when one begins was left by a command that was killed;
a step of it may still run in the guest (a tree's unpacking), so the next session closes its
handles, moves each of its files aside (the step's own rename into place then finds nothing)
and removes them. A guest that does not let it is given a few seconds a session and three
sessions in all: the record is dropped after that.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.state import files

FOLDER = "guest-temp"  # in the VM's directory
NAME = ".clan-vm-{kind}.{token}.XXXXXXXX"  # a template for mktemp, in a recorded directory
# $0: the token; "$@": the directories. Nothing but names carrying the token is touched;
# each is renamed aside first, so a killed command's step still running cannot move what
# is left of it into place. Exit 1 when something could not be removed (tried again).
SWEEP = r"""ok=0
for d in "$@"; do for m in "$d"/.clan-vm-*."$0".*; do
  [ -e "$m" ] || [ -L "$m" ] || continue
  case $m in *.swept) ;; *) mv -f -T -- "$m" "$m.swept" 2>/dev/null || continue; m=$m.swept ;; esac
  rm -rf -- "$m" || ok=1
done; done
exit $ok
"""
BUDGET = 5.0  # seconds a session spends on what killed commands left
TRIES = 3  # sessions that try before a record is dropped
RECORD_MAX = 4096  # bytes: a record names a few directories and handles
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _Status(Protocol):
    @property
    def exited(self) -> bool: ...

    @property
    def exit_code(self) -> int: ...


class _Agent(Protocol):
    """What this module asks of ``vm.agent.Agent``."""

    name: str
    records: Path | None

    def exec_start(self, argv: list[str], stdin: bytes | None = None) -> int: ...

    def exec_status(self, pid: int, timeout: float) -> _Status: ...

    def close(self, handle: int) -> None: ...


def sweep(agent: _Agent, token: str, directories: list[str], budget: float) -> bool:
    """Remove the guest's files of TOKEN in DIRECTORIES within BUDGET seconds; whether the
    guest did."""
    if not directories:
        return True
    deadline, pause = time.monotonic() + budget, 0.01
    try:
        pid = agent.exec_start(["/bin/sh", "-c", SWEEP, token, *directories])
        while not (status := agent.exec_status(pid, max(budget, 1.0))).exited:
            if time.monotonic() > deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
    except ClanVMError:  # the agent or the guest is at fault: the record stays
        return False
    return status.exit_code == 0


def _load(record: Path) -> dict[str, Any] | None:
    """The record's content if it is one of ours: a small regular file, never through a
    link, holding absolute directories and integer handles; None for anything else."""
    try:
        fd = os.open(record, _FLAGS)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > RECORD_MAX:
            return None
        data = json.loads(os.read(fd, RECORD_MAX + 1))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(data, dict):
        return None
    dirs, handles, tries = data.get("dirs"), data.get("handles", []), data.get("tries", 0)
    if not isinstance(dirs, list) or not all(
        isinstance(d, str) and d.startswith("/") and "\0" not in d for d in dirs
    ):
        return None
    if not isinstance(handles, list) or not all(type(h) is int for h in handles):
        return None
    if type(tries) is not int:
        return None
    return {"dirs": dirs, "handles": handles, "tries": tries}


def _drop(record: Path) -> None:
    with contextlib.suppress(OSError):  # a directory planted there is not ours to remove
        record.unlink()


def tidy(agent: _Agent) -> None:
    """Remove what killed commands left in the guest (cheap when there is nothing)."""
    if agent.records is None:
        return
    try:
        records = sorted(agent.records.iterdir())
    except OSError:
        return
    deadline = time.monotonic() + BUDGET
    for record in records:
        data = _load(record)
        if data is None:  # torn, or not ours: it names nothing the guest made
            _drop(record)
            continue
        left = deadline - time.monotonic()
        if left > 0:  # once the budget is spent, the rest count a try all the same
            for handle in data["handles"]:
                agent.close(handle)
        swept = left > 0 and sweep(agent, record.name, data["dirs"], left)
        tries = data["tries"] + 1
        if swept or tries >= TRIES:
            _drop(record)
        else:
            files.atomic_write(record, json.dumps({**data, "tries": tries}).encode())


class Temporary:
    """Temporary files of one command in the guest: ``template`` for mktemp, its record."""

    def __init__(self, agent: _Agent, directories: list[str]) -> None:
        self._agent = agent
        self.token = os.urandom(8).hex()  # secrets' own source, without its imports
        self.directories = directories
        self.handles: list[int] = []
        self.record = None if agent.records is None else agent.records / self.token
        self.settled = False

    def template(self, kind: str) -> str:
        return NAME.format(kind=kind, token=self.token)

    def write_ahead(self) -> None:
        # A record naming nothing yet (no directory, no handle) would be removed unread.
        if self.record is not None and (self.directories or self.handles):
            files.private_dir(self.record.parent)
            content = {"dirs": self.directories, "handles": self.handles}
            files.atomic_write(self.record, json.dumps(content).encode())

    def holds(self, handle: int) -> int:
        """HANDLE, an agent's handle on one of its files, recorded (closed if killed)."""
        self.handles.append(handle)
        self.write_ahead()
        return handle

    def remove(self) -> None:
        """Remove its files in the guest now; the record goes once the guest did."""
        if sweep(self._agent, self.token, self.directories, BUDGET):
            self.forget()
        self.settled = True

    def forget(self) -> None:
        if self.record is not None:
            self.record.unlink(missing_ok=True)
        self.settled = True


@contextlib.contextmanager
def recorded(agent: _Agent, *directories: str) -> Iterator[Temporary]:
    """Temporary files in the guest's DIRECTORIES (absolute), recorded for the block: a
    failing block's are removed; at the end of the block, the command has renamed or removed
    them (``remove``), and the record goes; a killed one's are removed by the next session."""
    made = Temporary(agent, list(directories))
    made.write_ahead()
    try:
        yield made
    except BaseException:
        if not made.settled:
            made.remove()
        raise
    if not made.settled:
        made.forget()
