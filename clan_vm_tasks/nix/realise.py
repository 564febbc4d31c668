"""Building what a declared VM needs with one ``nix build``, rooted under
``STATE/gcroots/NAME``, and remembering which flake the VM came from.

GC roots live beside the VM directory rather than in it because the VM
directory is created by renaming a staging directory into place; nix registers
an out-link by its absolute path, so a link moved after the build would stop
protecting anything.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.nix import command, evaluate
from clan_vm_tasks.nix.flakes import Flake, current_system, where
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import Store

ORIGIN = "origin.json"  # in STATE/gcroots/NAME: which flake the VM came from, what is rooted


def roots_dir(store: Store, name: str) -> Path:
    return store.root / "gcroots" / name


def read_origin(store: Store, name: str) -> dict[str, Any]:
    try:
        data = json.loads((roots_dir(store, name) / ORIGIN).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_origin(store: Store, name: str, data: dict[str, Any]) -> None:
    directory = files.private_dir(roots_dir(store, name))
    files.atomic_write(directory / ORIGIN, json.dumps(data, indent=2).encode())


def realise(
    store: Store,
    flake: Flake,
    name: str,
    evaluated: evaluate.Evaluated,
    allowed_qemu_args: list[str] | None = None,
) -> dict[str, Any]:
    """Build what the VM's files need (one nix build), unless its GC roots already hold it.

    The origin it writes also remembers extra QEMU arguments the user allowed."""
    objects = sorted({o for objs in evaluated.installables.values() for o in objs})
    origin = read_origin(store, name)
    rooted: dict[str, list[str]] = origin.get("roots") or {}
    directory = roots_dir(store, name)
    links = sorted(directory.glob("result*"))
    if (
        set(objects) <= set(rooted)
        and all(os.path.exists(p) for o in objects for p in rooted[o])
        and {os.path.realpath(link) for link in links} >= {p for o in objects for p in rooted[o]}
    ):
        built = {o: rooted[o] for o in objects}
    else:
        files.private_dir(directory)
        for link in links:
            link.unlink()
        built = command.realise(objects, directory / "result", what=f"building {where(name)}")
    for field in evaluate.BUILDABLE_FIELDS:
        value = evaluated.definition.get(field)
        if isinstance(value, str) and not os.path.exists(value):
            raise ClanVMError(f"{where(name)}.{field}: {value} does not exist after building it")
    data = {"flake": flake.ref, "system": current_system(), "roots": built}
    if allowed_qemu_args:
        data["allowed_qemu_args"] = allowed_qemu_args
    _write_origin(store, name, data)
    return data


def forget(store: Store, name: str) -> None:
    """Drop the GC roots of a VM that no longer exists."""
    shutil.rmtree(roots_dir(store, name), ignore_errors=True)
