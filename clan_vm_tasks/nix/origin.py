"""The record of where a declared VM came from (``STATE/gcroots/NAME/origin.json``): its
flake, the system it was evaluated for, what is rooted for it here and on its host, and
what the user allowed it (extra QEMU arguments, shared host directories).

Loaded once per command and passed on. A record that was torn or changed by hand is read
field by field: a field of the wrong shape counts as absent (a consent is then asked
again, roots are built again), never as something else.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import Store

ORIGIN = "origin.json"


@dataclass(frozen=True)
class HostRoots:
    """The GC roots of a VM's store paths on its remote libvirt host (see ``nix.remote``)."""

    uri: str
    dir: str  # relative to the login's home there
    digest: str  # which build's roots


@dataclass(frozen=True)
class Origin:
    flake: str | None = None  # the reference it was evaluated from; None: not from a flake
    overrides: list[list[str]] | None = None  # [input, reference]: --override-input given
    system: str | None = None
    roots: dict[str, list[str]] = field(default_factory=dict)  # installable -> built paths
    host_roots: HostRoots | None = None
    allowed_qemu_args: list[str] | None = None  # exactly these, as the user allowed them
    allowed_shares: dict[str, list[str]] | None = None  # tag -> [source, access, ...]

    @classmethod
    def from_raw(cls, data: Any) -> Origin:
        if not isinstance(data, dict):
            return cls()
        return cls(
            flake=_text(data.get("flake")),
            overrides=_pairs(data.get("overrides")),
            system=_text(data.get("system")),
            roots=_roots(data.get("roots")),
            host_roots=_host_roots(data.get("host_roots")),
            allowed_qemu_args=_words(data.get("allowed_qemu_args")),
            allowed_shares=_shares(data.get("allowed_shares")),
        )

    def to_json(self) -> bytes:
        data = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return json.dumps(data, indent=2).encode()

    def replace(self, **changes: Any) -> Origin:
        return dataclasses.replace(self, **changes)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _words(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _pairs(value: Any) -> list[list[str]] | None:
    if isinstance(value, list) and all(
        isinstance(v, list) and len(v) == 2 and _words(v) is not None for v in value
    ):
        return [list(v) for v in value]
    return None


def _roots(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and _words(v) is not None}


def _shares(value: Any) -> dict[str, list[str]] | None:
    if not isinstance(value, dict):
        return None
    found = {k: v for k, v in value.items() if isinstance(k, str) and _words(v) is not None}
    return found if len(found) == len(value) else None  # a partial consent is none


def _host_roots(value: Any) -> HostRoots | None:
    if not isinstance(value, dict):
        return None
    uri, directory, digest = (_text(value.get(k)) for k in ("uri", "dir", "digest"))
    if uri is None or directory is None or digest is None:
        return None
    return HostRoots(uri, directory, digest)


def roots_dir(store: Store, name: str) -> Path:
    """Beside the VM directory, not in it: the VM directory is made by renaming a staging
    directory into place, and Nix registers an out-link by its absolute path."""
    return store.root / "gcroots" / name


def load(store: Store, name: str) -> Origin:
    try:
        return Origin.from_raw(json.loads((roots_dir(store, name) / ORIGIN).read_bytes()))
    except (OSError, ValueError):
        return Origin()


def save(store: Store, name: str, origin: Origin) -> None:
    directory = files.private_dir(roots_dir(store, name))
    files.atomic_write(directory / ORIGIN, origin.to_json())
