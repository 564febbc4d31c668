"""What a killed ``create`` or ``delete`` left, finished by the next command of any name.

Both work in a hidden directory ``vms/.PURPOSE-NAME-PID`` under the VM's lock, so a
leftover whose lock can be had belongs to a command that died. Its definition (written
first) names the backend, which takes away what it made for the VM or still holds of it,
keeping the disks when the delete was to keep them; a half-created VM is then gone, a
half-deleted one finished, and its ``delete`` event recorded if it was not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from clan_vm_tasks.backends.base import Removed
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.render import Notify
from clan_vm_tasks.state import history
from clan_vm_tasks.state.store import Store, VMPaths
from clan_vm_tasks.vm import machines, survey

_STAGING = re.compile(r"\.(creating|deleting|keeping)-(.+)-(\d+)")


def finish(store: Store, warn: Notify) -> None:
    try:
        entries = os.listdir(store.vms)
    except FileNotFoundError:
        return
    for entry in entries:
        found = _STAGING.fullmatch(entry)
        if found is None:
            continue
        name = found.group(2)
        fd = store.try_lock(name)
        if fd is None:
            continue  # its command is still at work
        try:
            _finish(store, store.vms / entry, found.group(1), name, warn)
        finally:
            store.drop_lock_file(name)
            os.close(fd)


def _host(staging: Path) -> str | None:
    try:
        return survey.placement(json.loads((staging / "config.json").read_bytes()))
    except (OSError, ValueError):
        return None  # killed before its definition was written: nothing made anywhere yet


def _finish(store: Store, staging: Path, purpose: str, name: str, warn: Notify) -> None:
    what = "create" if purpose == "creating" else "delete"
    removed, label = Removed(), None
    try:
        backend = machines.backend(_host(staging))
        label = backend.label
        removed = backend.remove(name, VMPaths(staging), store, keep_disk=purpose == "keeping")
    except ClanVMError as error:  # its host did not answer: the hidden directory goes anyway
        warn(f"warning: an interrupted {what} of '{name}' may have left its disk there: {error}")
    except OSError as error:  # a disk could not be kept: nothing is removed
        warn(f"warning: could not clear {staging}: {error}")
        return
    try:
        # Renamed away at its ctime: an event from then on was recorded by that command.
        if what == "delete" and not history.recorded_since(
            store.history, name, "delete", os.stat(staging).st_ctime
        ):
            details = removed.described(label)
            history.record(
                store.history, name, "delete", details + " (finished after an interruption)"
            )
        shutil.rmtree(staging, ignore_errors=True)
    except OSError as error:
        warn(f"warning: could not clear {staging}: {error}")
