"""Building what a declared VM needs with one ``nix build``, rooted under
``STATE/gcroots/NAME``, and remembering which flake the VM came from.

GC roots live beside the VM directory rather than in it because the VM
directory is created by renaming a staging directory into place; nix registers
an out-link by its absolute path, so a link moved after the build would stop
protecting anything.
"""

from __future__ import annotations

import hashlib
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


def remember(store: Store, name: str, **fields: Any) -> None:
    """Add FIELDS to what the origin of VM NAME records."""
    _write_origin(store, name, {**read_origin(store, name), **fields})


def realise(
    store: Store,
    flake: Flake,
    name: str,
    evaluated: evaluate.Evaluated,
    allowed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build everything the definition refers to (one nix build), unless its GC roots hold it.

    The roots of each build are kept in a directory of their own; those of earlier builds
    are dropped once the VM does not run (a running VM still uses its kernel, initrd and,
    for a NixOS guest, the system it sees over 9p). A flake in the Nix store is rooted too,
    so that the VM can find it again. The origin written also remembers what the user
    allowed (extra QEMU arguments, shares)."""
    objects = sorted({o for objs in evaluated.installables.values() for o in objs})
    if flake.read_only:  # the copy a VM keeps evaluating
        top = f"{command.STORE_DIR}/{flake.ref[len(command.STORE_DIR) + 1 :].split('/')[0]}"
        objects = sorted({*objects, top})
    digest = hashlib.sha256("\0".join(objects).encode()).hexdigest()[:16]
    directory = roots_dir(store, name)
    build_dir = directory / digest
    origin = read_origin(store, name)
    rooted: dict[str, list[str]] = origin.get("roots") or {}
    links = {os.path.realpath(link) for link in build_dir.glob("result*")}
    if set(objects) <= set(rooted) and all(
        os.path.exists(p) and p in links for o in objects for p in rooted[o]
    ):
        built = {o: rooted[o] for o in objects}
    else:
        files.private_dir(directory)
        files.private_dir(build_dir)
        for link in build_dir.glob("result*"):
            link.unlink()
        built = command.realise(
            objects, build_dir / "result", what=f"building {where(name)}", label=name
        )
    if directory.is_dir() and not running(store, name):
        for other in directory.iterdir():  # earlier builds, and links of the old layout
            if other != build_dir and (other.is_symlink() or other.is_dir()):
                if other.is_symlink():
                    other.unlink()
                else:
                    shutil.rmtree(other, ignore_errors=True)
    for field in evaluate.BUILDABLE_FIELDS:
        value = evaluated.definition.get(field)
        if isinstance(value, str) and not os.path.exists(value):
            raise ClanVMError(f"{where(name)}.{field}: {value} does not exist after building it")
    data: dict[str, Any] = {"flake": flake.ref, "system": current_system(), "roots": built}
    if isinstance(origin.get("host_roots"), dict):  # kept until the next copy replaces them
        data["host_roots"] = origin["host_roots"]
    data.update(allowed or {})
    _write_origin(store, name, data)
    return data


def running(store: Store, name: str) -> bool:
    from clan_vm_tasks.vm import reconcile

    return store.exists(name) and reconcile.current(store, name).status in reconcile.ACTIVE


def forget(store: Store, name: str) -> str | None:
    """Drop the GC roots of a VM that no longer exists, here and on its host; a warning
    when the host's could not be dropped."""
    host_roots = read_origin(store, name).get("host_roots")
    warning = None
    if isinstance(host_roots, dict):
        from clan_vm_tasks.nix import remote

        warning = remote.forget(host_roots, name)
    shutil.rmtree(roots_dir(store, name), ignore_errors=True)
    return warning
