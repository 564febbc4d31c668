"""Which flake a command means: ``--flake REF``, ``$CLAN_VM_FLAKE``, or the flake around the
working directory; and the system whose ``clanVms`` it reads."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.nix.command import attr


@dataclass(frozen=True)
class Flake:
    ref: str  # as given to nix
    directory: Path | None  # a local flake's directory (cache keys need no nix then)
    explicit: bool  # named by --flake or $CLAN_VM_FLAKE, not found in the working directory


def _local(ref: str) -> Path | None:
    path = ref.removeprefix("path:").removeprefix("git+file://")
    if "?" in path or "#" in path:
        return None
    candidate = Path(path).expanduser()
    if (
        ref.startswith(("path:", "git+file://", "/", ".", "~"))
        or (candidate / "flake.nix").exists()
    ):
        return candidate.absolute() if (candidate / "flake.nix").is_file() else None
    return None


def find_local(start: Path) -> Path | None:
    """The directory of the flake containing START, if any."""
    for directory in (start, *start.parents):
        if (directory / "flake.nix").is_file():
            return directory
    return None


def resolve(option: str | bool | None, *, discover: bool = True) -> Flake | None:
    """--flake REF, else $CLAN_VM_FLAKE, else (when DISCOVER) the flake around the cwd."""
    given = option if isinstance(option, str) and option else os.environ.get("CLAN_VM_FLAKE")
    if given:
        if "#" in given:
            raise InvalidInput(f"--flake takes a flake reference without '#': {given!r}")
        directory = _local(given)
        if directory is None and given.startswith(("/", ".", "~")):
            raise InvalidInput(f"no flake.nix in {given}")
        return Flake(str(directory) if directory else given, directory, explicit=True)
    if not (discover or option is True):
        return None
    directory = find_local(Path.cwd())
    return Flake(str(directory), directory, explicit=False) if directory else None


def current_system() -> str:
    explicit = os.environ.get("CLAN_VM_SYSTEM")
    if explicit:
        return explicit
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    kernel = "darwin" if platform.system() == "Darwin" else "linux"
    return f"{machine or platform.machine()}-{kernel}"


def where(name: str) -> str:
    return attr("clanVms", current_system(), name)


def chosen(option: str | bool | None) -> Flake:
    """The flake a Nix task works on; one found around the cwd counts as chosen."""
    flake = resolve(option)
    if flake is None:
        raise InvalidInput("no flake: pass --flake REF, set CLAN_VM_FLAKE, or run inside a flake")
    return Flake(flake.ref, flake.directory, explicit=True)
