"""Errors as HTTP answers: one JSON ``{"error": MESSAGE}``, never a traceback.

400: the request was wrong (the command line's exit code 2); 404: no such VM; 409: the
operation makes no sense in the VM's state; 502: the VM's libvirt host does not answer;
500: the operation itself failed (the command line's exit code 1).
"""

from __future__ import annotations

from clan_vm_tasks.errors import (
    ClanVMError,
    HostUnreachable,
    InvalidInput,
    StateConflict,
    UnknownVM,
)


def status_of(error: ClanVMError) -> int:
    if isinstance(error, UnknownVM):
        return 404
    if isinstance(error, InvalidInput):
        return 400
    if isinstance(error, StateConflict):
        return 409
    if isinstance(error, HostUnreachable):
        return 502
    return 500
