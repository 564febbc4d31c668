"""VM names double as directory and clan machine names, so they are kept strict; a VM's
MAC address is derived from its name."""

from __future__ import annotations

import re

from clan_vm_tasks.errors import InvalidInput

MAX_NAME_LENGTH = 63
# clan's machine-name rule (a VM can become a clan machine, its name is its hostname).
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")
# What VMs created before that rule may be called: still found, stopped and deleted.
_LEGACY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def name_problem(name: str) -> str | None:
    """Why NAME cannot be a new VM's name, or None when it can."""
    if not name:
        return "VM name must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"VM name is longer than {MAX_NAME_LENGTH} characters"
    if not _NAME.fullmatch(name):
        return (
            f"invalid VM name {name!r}: use letters, digits and '-' (not first or last), "
            "as clan machine names and hostnames do"
        )
    return None


def check_new_name(name: str) -> str:
    problem = name_problem(name)
    if problem:
        raise InvalidInput(problem)
    return name


def check_name(name: str) -> str:
    """A name that may refer to an existing VM (also one named before the current rule)."""
    if _LEGACY_NAME.fullmatch(name):
        return name
    return check_new_name(name)


def mac_for(name: str) -> str:
    """A locally administered unicast MAC that is the same for a name on every host."""
    import hashlib  # lazy: names are checked on the list path, MACs are not needed there

    digest = hashlib.sha256(f"clan-vm:{name}".encode()).digest()
    octets = [0x02, *digest[:5]]  # 0x02: locally administered, unicast
    return ":".join(f"{o:02x}" for o in octets)
