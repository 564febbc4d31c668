"""Which flake a command means: ``--flake REF``, ``$CLAN_VM_FLAKE``, or the flake around the
working directory; and the system whose ``clanVms`` it reads."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.nix.command import STORE_DIR, FlakeRef, attr

APP_FLAKE = "CLAN_VM_APP_FLAKE"  # set by the flake apps (lib/apps.nix): the flake they came from
# Also set by the apps: {input: store path} of the inputs `nix run` evaluated the app with.
APP_INPUTS = "CLAN_VM_APP_INPUTS"


@dataclass(frozen=True)
class Flake:
    ref: str  # as given to nix
    directory: Path | None  # a local flake's directory (cache keys need no nix then)
    explicit: bool  # named by --flake or $CLAN_VM_FLAKE, not found in the working directory
    overrides: tuple[tuple[str, str], ...] = ()  # --override-input NAME REF, in order
    # For the flake of a flake app: its inputs as `nix run` evaluated them (overridden there
    # or not), so that the tool evaluates what the app was made from, needing no network.
    app_inputs: tuple[tuple[str, str], ...] = ()

    def with_overrides(self, pairs: Sequence[Sequence[str]] | None) -> Flake:
        """This flake with its inputs overridden by PAIRS ([input, reference], remembered)."""
        found = tuple((str(pair[0]), str(pair[1])) for pair in pairs or ())
        return dataclasses.replace(self, overrides=found)

    @property
    def target(self) -> FlakeRef:
        """The flake as Nix is asked about it, with its overridden inputs (those given win
        over the app's)."""
        given = dict(self.overrides)
        inputs = [(n, r) for n, r in self.app_inputs if n not in given] + list(self.overrides)
        return FlakeRef(self.ref, tuple(inputs))

    @property
    def read_only(self) -> bool:
        """A flake in the Nix store: nothing may be written there (no lock file, no
        inventory); its copy is all there is to evaluate."""
        return self.ref.startswith(STORE_DIR + "/")

    @property
    def label(self) -> str:
        """The flake as messages name it."""
        return f"{self.ref} (read-only, in the Nix store)" if self.read_only else self.ref


def local_directory(ref: str) -> Path | None:
    """The directory of a flake reference that names one on this machine, if any."""
    return _local(ref)


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


def resolve(
    option: str | bool | None,
    *,
    discover: bool = True,
    overrides: tuple[tuple[str, str], ...] = (),
) -> Flake | None:
    """--flake REF, else $CLAN_VM_FLAKE, else (when DISCOVER) the flake around the cwd; with
    its inputs OVERRIDES."""
    found = _resolve(option, discover)
    return found.with_overrides(overrides) if found is not None and overrides else found


def _resolve(option: str | bool | None, discover: bool) -> Flake | None:
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
    app = os.environ.get(APP_FLAKE)
    if app and not (directory and _same_flake(directory, app)):
        # A flake app run outside a checkout of its flake: the flake's own copy.
        local = _local(app)
        return Flake(str(local) if local else app, local, False, app_inputs=_app_inputs())
    if directory is None:
        return None
    return Flake(str(directory), directory, False, app_inputs=_app_inputs() if app else ())


def _app_inputs() -> tuple[tuple[str, str], ...]:
    """The inputs the running flake app was evaluated with (lib/apps.nix), as overrides."""
    try:
        found = json.loads(os.environ.get(APP_INPUTS) or "{}")
    except ValueError:
        return ()
    if not isinstance(found, dict):
        return ()
    return tuple(
        (name, f"path:{path}")
        for name, path in sorted(found.items())
        if _INPUT.fullmatch(name) and isinstance(path, str) and path.startswith(STORE_DIR + "/")
    )


def _same_flake(checkout: Path, copy: str) -> bool:
    """Whether CHECKOUT is the flake whose copy (as the app got it from Nix) is COPY: the copy
    is what Nix took of the checkout when the app was run, flake.nix included."""
    try:
        theirs = (Path(copy) / "flake.nix").read_bytes()
    except OSError:
        return True  # not a directory (a remote reference): the checkout is all we know
    try:
        return (checkout / "flake.nix").read_bytes() == theirs
    except OSError:
        return False


def current_system() -> str:
    explicit = os.environ.get("CLAN_VM_SYSTEM")
    if explicit:
        return explicit
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    kernel = "darwin" if platform.system() == "Darwin" else "linux"
    return f"{machine or platform.machine()}-{kernel}"


def where(name: str) -> str:
    return attr("clanVms", current_system(), name)


def chosen(option: str | bool | None, overrides: tuple[tuple[str, str], ...] = ()) -> Flake:
    """The flake a Nix task works on; one found around the cwd counts as chosen."""
    flake = resolve(option)
    if flake is None:
        raise InvalidInput("no flake: pass --flake REF, set CLAN_VM_FLAKE, or run inside a flake")
    return dataclasses.replace(flake, explicit=True, overrides=overrides)


_INPUT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_'-]*(/[A-Za-z0-9_][A-Za-z0-9_'-]*)*")


def parse_overrides(given: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``--override-input NAME REF`` (the command line joins the two as NAME=REF): an input
    of the flake (``nixpkgs``, or ``clan-vm-tasks/nixpkgs`` for an input of an input) and the
    flake reference it takes instead."""
    found: dict[str, str] = {}
    for item in given:
        name, equals, ref = item.partition("=")
        if not equals or not _INPUT.fullmatch(name) or not ref or ref != ref.strip():
            raise InvalidInput(
                f"--override-input takes an input's name and a flake reference "
                f"(--override-input nixpkgs git+file:///src/nixpkgs), not {item!r}"
            )
        if "#" in ref:
            raise InvalidInput(f"--override-input {name}: a flake reference without '#': {ref!r}")
        if name in found and found[name] != ref:
            raise InvalidInput(f"--override-input {name} is given twice")
        found[name] = ref
    return tuple(found.items())
