"""Evaluation cache: a flake that has not changed is not evaluated again.

The key is computed without running nix for a flake in a local directory: the
contents of every file Nix would see (git-tracked files, dirty or not, when the
flake is in a git repository; all files otherwise; ``flake.lock`` pins the
inputs and is one of them), plus the system and the evaluation expression. A
remote flake reference that is already locked (``rev=``/``narHash=``) is its own
key; any other remote reference is locked with ``nix flake metadata`` (not an
evaluation, but a nix call).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from clan_vm_tasks.nix import command as nix
from clan_vm_tasks.nix.evaluate import APPLY
from clan_vm_tasks.nix.flakes import local_directory
from clan_vm_tasks.state import files

FORMAT = 1
KEEP = 32  # cache files kept per state dir
SMALL = 1 << 20  # files up to this size are hashed by content, larger ones by stat


def _git_files(directory: Path) -> tuple[Path, list[str]] | None:
    try:
        top = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        listed = subprocess.run(
            ["git", "-C", top, "ls-files", "-z", "--cached"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(top), sorted(p for p in listed.decode().split("\0") if p)


def _all_files(directory: Path) -> list[str]:
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        found += [os.path.relpath(os.path.join(root, f), directory) for f in names]
    return sorted(found)


def source_digest(directory: Path) -> str:
    """What Nix would copy of the flake in DIRECTORY, as a digest."""
    listed = _git_files(directory)
    top, files = listed if listed else (directory, _all_files(directory))
    digest = hashlib.sha256(f"{top}\0{directory.resolve()}\0".encode())
    for name in files:
        path = top / name
        try:
            info = path.lstat()
        except FileNotFoundError:
            digest.update(f"{name}\0deleted\0".encode())  # deleted but still tracked
            continue
        digest.update(f"{name}\0{info.st_mode:o}\0{info.st_size}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif info.st_size <= SMALL:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        else:
            digest.update(f"{info.st_mtime_ns}\0{info.st_ino}".encode())
    return digest.hexdigest()


def flake_identity(ref: str, directory: Path | None) -> str:
    if ref.startswith(nix.STORE_DIR + "/"):
        return "ref:" + ref  # a store path never changes
    if directory is not None:
        return "dir:" + source_digest(directory)
    if "rev=" in ref or "narHash=" in ref:
        return "ref:" + ref
    meta = json.loads(nix.run(["flake", "metadata", "--json", ref], what=f"locking {ref}"))
    return "locked:" + json.dumps([meta.get("locked"), meta.get("locks")], sort_keys=True)


def key(
    ref: str,
    directory: Path | None,
    system: str,
    overrides: tuple[tuple[str, str], ...] = (),
) -> str:
    """The cache key of REF's evaluation for SYSTEM, with its inputs OVERRIDES (each known by
    its contents, like the flake)."""
    material: list[object] = [FORMAT, flake_identity(ref, directory), ref, system, APPLY]
    for name, target in overrides:
        material += [name, target, flake_identity(target, local_directory(target))]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:32]


def _dir(state_dir: Path) -> Path:
    return state_dir / "nix-eval-cache"


def load(state_dir: Path, cache_key: str) -> dict[str, Any] | None:
    try:
        data = json.loads((_dir(state_dir) / f"{cache_key}.json").read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save(state_dir: Path, cache_key: str, data: dict[str, Any]) -> None:
    directory = files.private_dir(_dir(state_dir))
    files.atomic_write(directory / f"{cache_key}.json", json.dumps(data).encode())
    entries = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[KEEP:]:
        stale.unlink(missing_ok=True)
