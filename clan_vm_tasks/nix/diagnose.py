"""Nix's errors made to point at the user's files: paths in the flake's store copy become
paths in the checkout, and a few common mistakes get a hint (a flake without clanVms, a file
git does not track, so Nix does not see it, a Nix that cannot read git checkouts in a chroot,
an input that cannot be fetched offline)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from clan_vm_tasks.nix.command import STORE_DIR
from clan_vm_tasks.nix.flakes import Flake

_IN_STORE = re.compile(re.escape(STORE_DIR) + r"/[0-9a-z]{32}-[^/\s'`\"]+/([^\s'`\":,]+)")
_MISSING = re.compile(
    r"(?:getting status of|path|opening file) '"
    + re.escape(STORE_DIR)
    + r"/[0-9a-z]{32}-[^/']+/([^']+)'(?:: No such file or directory| does not exist)"
)


def _roots(directory: Path) -> list[Path]:
    """The checkout and its parents up to the repository's top (a flake in a subdirectory
    is copied from the top)."""
    found = [directory]
    for parent in directory.parents:
        if (found[-1] / ".git").exists():
            break
        found.append(parent)
    return found


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def localize(text: str, directory: Path | None) -> str:
    """Name the checkout's file wherever TEXT names its copy in the store."""
    if directory is None:
        return text

    def swap(found: re.Match[str]) -> str:
        relative = found.group(1)
        for root in _roots(directory):
            if _same_file(Path(found.group(0)), root / relative):
                return str(root / relative)
        return found.group(0)

    return _IN_STORE.sub(swap, text)


def _untracked(directory: Path, relative: str) -> Path | None:
    for root in _roots(directory):
        candidate = root / relative
        if candidate.exists():
            listed = subprocess.run(
                ["git", "-C", str(root), "ls-files", "--error-unmatch", "--", relative],
                capture_output=True,
                check=False,
            )
            return candidate if listed.returncode != 0 else None
    return None


def in_chroot() -> bool:
    """Whether this process runs in a chroot: its root is no mount point of its mount
    namespace (the kernel shows mount points relative to the process's root)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            return not any(line.split()[4:5] == ["/"] for line in mounts)
    except OSError:
        return False


def hint(text: str, flake: Flake) -> str:
    """A hint for the mistake behind TEXT (an error of FLAKE), or ''."""
    if "of the Git tree" in text and "cannot change to" in text and in_chroot():
        # Nix as root enters its own mount namespace, and going back to the saved one to run
        # git leaves the chroot (NixOS/nix#7602, fixed in Nix 2.17).
        return (
            "; this Nix, run by root in a chroot, runs git outside the chroot (NixOS/nix#7602, "
            "fixed in Nix 2.17): run it outside the chroot, or as a normal user"
        )
    if "unable to download" in text or "Couldn't resolve host" in text:
        return (
            "; an input of the flake could not be fetched: give it from a local checkout with "
            "--override-input NAME git+file:///PATH (the lock file stays as it is)"
        )
    if "does not provide attribute" in text and "clanVms" in text:
        return (
            "; the flake has no clanVms: import clan-vm-tasks.flakeModules.default and declare "
            "perSystem.clanVms (or set clanVms.<system>.<name> by hand)"
        )
    missing = _MISSING.search(text)
    if missing and flake.directory is not None:
        found = _untracked(flake.directory, missing.group(1))
        if found is not None:
            return (
                f"; {found} exists, but git does not track it, and Nix sees only what git "
                f"tracks: git add {missing.group(1)}?"
            )
    return ""


def explain(text: str, flake: Flake) -> str:
    """An error text of Nix about FLAKE (one line, maybe a location line), for the user."""
    first, newline, rest = text.partition("\n")
    return (
        localize(first + hint(first, flake), flake.directory)
        + newline
        + localize(rest, flake.directory)
    )
