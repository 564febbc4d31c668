"""Temporary files the tool makes in a guest (a copy's before it is renamed into place, a
command's spooled input, a tree's archive), written ahead on the host so that what a killed
command left in the guest is removed by the next command that works there.

The guest's ``mktemp`` makes each with a name carrying a token of the command's own
(``.clan-vm-KIND.TOKEN.XXXXXXXX``), in a directory recorded beforehand under that token in
``vms/NAME/guest-temp/``. The record goes once the command is done with the file (renamed into
place, or removed). Sessions with an agent take turns, so a record found when one begins was
left by a command that was killed: the guest removes what it names, then the record goes.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.state import files

FOLDER = "guest-temp"  # in the VM's directory
NAME = ".clan-vm-{kind}.{token}.XXXXXXXX"  # a template for mktemp, in a recorded directory
# $0: the token; "$@": the directories. Nothing but names carrying the token is touched.
SWEEP = 'for d in "$@"; do rm -rf -- "$d"/.clan-vm-*."$0".*; done'
SWEEP_TIMEOUT = 30.0


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


def sweep(agent: _Agent, token: str, directories: list[str]) -> bool:
    """Remove the guest's files of TOKEN in DIRECTORIES; whether the guest did."""
    try:
        pid = agent.exec_start(["/bin/sh", "-c", SWEEP, token, *directories])
        deadline, pause = time.monotonic() + SWEEP_TIMEOUT, 0.01
        while not (status := agent.exec_status(pid, SWEEP_TIMEOUT)).exited:
            if time.monotonic() > deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
    except ClanVMError:  # the agent or the guest is at fault: the record stays
        return False
    return status.exit_code == 0


def tidy(agent: _Agent) -> None:
    """Remove what killed commands left in the guest (cheap when there is nothing)."""
    if agent.records is None:
        return
    try:
        records = sorted(agent.records.iterdir())
    except FileNotFoundError:
        return
    for record in records:
        try:
            directories = json.loads(record.read_bytes())
        except (OSError, ValueError):
            directories = None
        valid = isinstance(directories, list) and all(
            isinstance(d, str) and d.startswith("/") for d in directories
        )
        if not valid or sweep(agent, record.name, directories):
            record.unlink(missing_ok=True)  # a torn record names nothing yet: never made


class Temporary:
    """Temporary files of one command in the guest: ``template`` for mktemp, its record."""

    def __init__(self, agent: _Agent, directories: list[str]) -> None:
        self._agent = agent
        self.token = secrets.token_hex(8)
        self.directories = directories
        self.record = None if agent.records is None else agent.records / self.token
        self.settled = False

    def template(self, kind: str) -> str:
        return NAME.format(kind=kind, token=self.token)

    def write_ahead(self) -> None:
        if self.record is not None:
            files.private_dir(self.record.parent)
            files.atomic_write(self.record, json.dumps(self.directories).encode())

    def remove(self) -> None:
        """Remove its files in the guest now; the record goes once the guest did."""
        if sweep(self._agent, self.token, self.directories):
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
