"""Network identity: stable MAC addresses derived from the VM name."""

from __future__ import annotations

import hashlib


def mac_for(name: str) -> str:
    """A locally administered unicast MAC that is the same for a name on every host."""
    digest = hashlib.sha256(f"clan-vm:{name}".encode()).digest()
    octets = [0x02, *digest[:5]]  # 0x02: locally administered, unicast
    return ":".join(f"{o:02x}" for o in octets)
