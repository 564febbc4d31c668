"""Building what a declared VM needs with one ``nix build``, rooted under
``STATE/gcroots/NAME`` (``origin.roots_dir``), and recording it in the VM's origin."""

from __future__ import annotations

import hashlib
import os
import shutil

from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.nix import command, evaluate
from clan_vm_tasks.nix.flakes import Flake, current_system, where
from clan_vm_tasks.nix.origin import Origin, roots_dir, save
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import Store


def realise(
    store: Store,
    flake: Flake,
    name: str,
    evaluated: evaluate.Evaluated,
    origin: Origin,
) -> Origin:
    """Build everything the definition refers to (one nix build), unless its GC roots hold it.

    The roots of each build are kept in a directory of their own; those of earlier builds
    are dropped once the VM does not run (a running VM still uses its kernel, initrd and,
    for a NixOS guest, the system it sees over 9p). A flake in the Nix store is rooted too,
    so that the VM can find it again. Returns ORIGIN as written, with the flake, the system
    and the roots of this build (the rest of it, such as consent, as given)."""
    objects = sorted({o for objs in evaluated.installables.values() for o in objs})
    if flake.read_only:  # the copy a VM keeps evaluating
        top = f"{command.STORE_DIR}/{flake.ref[len(command.STORE_DIR) + 1 :].split('/')[0]}"
        objects = sorted({*objects, top})
    digest = hashlib.sha256("\0".join(objects).encode()).hexdigest()[:16]
    directory = roots_dir(store, name)
    build_dir = directory / digest
    rooted = origin.roots
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
    # Host roots are kept until the next copy replaces them.
    overrides = [list(pair) for pair in flake.overrides] or None
    written = origin.replace(
        flake=flake.ref, overrides=overrides, system=current_system(), roots=built
    )
    save(store, name, written)
    return written


def running(store: Store, name: str) -> bool:
    from clan_vm_tasks.vm import reconcile

    return store.exists(name) and reconcile.current(store, name).status in reconcile.ACTIVE


def forget(store: Store, name: str, origin: Origin) -> str | None:
    """Drop the GC roots of a VM that no longer exists (ORIGIN: its record), here and on its
    host; a warning when the host's could not be dropped."""
    warning = None
    if origin.host_roots is not None:
        from clan_vm_tasks.nix import remote

        warning = remote.forget(origin.host_roots, name)
    shutil.rmtree(roots_dir(store, name), ignore_errors=True)
    return warning
