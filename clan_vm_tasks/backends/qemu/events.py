"""QEMU's event log: every QMP event of one boot, written by QEMU itself to a file.

A second QMP monitor on a ``pipe`` chardev whose ``.in`` file holds our capabilities
request and whose ``.out`` file receives the greeting, the reply and then every event.
Read after QEMU is gone, its last SHUTDOWN event says why it ended.
"""

from __future__ import annotations

import json
from pathlib import Path

HOST_REASONS = {
    "host-signal": "QEMU was ended by a signal from outside the tool",
    "host-qmp-quit": "QEMU quit on a QMP request from outside the tool",
    "host-error": "QEMU stopped on an error of the host",
}


def shutdown_reason(log: Path) -> tuple[str | None, bool]:
    """The reason of the last SHUTDOWN event (None if none), and whether the guest
    reported a panic (GUEST_PANICKED)."""
    try:
        lines = log.read_bytes().splitlines()
    except OSError:
        return None, False
    reason, panicked = None, False
    for line in lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue  # a line QEMU was writing when it died
        if not isinstance(message, dict):
            continue
        if message.get("event") == "GUEST_PANICKED":
            panicked = True
        elif message.get("event") == "SHUTDOWN":
            data = message.get("data")
            reason = str(data.get("reason")) if isinstance(data, dict) else None
    return reason, panicked
