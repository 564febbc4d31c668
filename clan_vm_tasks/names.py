"""VM names double as directory and clan machine names, so they are kept strict."""

from __future__ import annotations

import re

from clan_vm_tasks.errors import InvalidInput

MAX_NAME_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def name_problem(name: str) -> str | None:
    """Why NAME is not a valid VM name, or None when it is."""
    if not name:
        return "VM name must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"VM name is longer than {MAX_NAME_LENGTH} characters"
    if not _NAME.fullmatch(name):
        return (
            f"invalid VM name {name!r}: use letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    return None


def check_name(name: str) -> str:
    problem = name_problem(name)
    if problem:
        raise InvalidInput(problem)
    return name
