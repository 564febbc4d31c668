"""The host ports ``auto`` forwards take, on this machine and on libvirt hosts alike: the
previous boot's port while it is free, else a random one from ``AUTO_PORTS``.

The range lies below Linux's ephemeral range (32768-60999 by default), where the kernel
picks the local ports of outgoing connections, so a VM's port is not taken by a passing
connection between two boots, and above the ports services usually listen on.
"""

from __future__ import annotations

import random

AUTO_PORTS = (20000, 32767)
AUTO_TRIES = 40  # random picks before giving up (the range is 12768 ports wide)


def candidates(previous: int | None) -> list[int]:
    """The ports to try for one ``auto`` forward, in order: PREVIOUS (if any), then random
    ones from the range."""
    picks = [random.randint(*AUTO_PORTS) for _ in range(AUTO_TRIES)]
    return ([previous] if previous else []) + picks
