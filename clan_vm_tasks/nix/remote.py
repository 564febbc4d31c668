"""A declared VM on a remote libvirt host gets the store paths it refers to there: built
here, copied with ``nix copy --to ssh://…`` (what is there already is not sent again),
and kept by indirect GC roots in the login's home there (``remote.ROOTS_DIR``) while the
VM exists. The kernel and initrd travel as volumes of the host's storage pool (see the
libvirt backend); what is copied is the rest: shared store paths, the system an ``init=``
names.

ssh is the one libvirt uses for that host (same user, port, key, ``command=``), so the
host needs nothing beyond what libvirt already needs, and a user's ``nix`` there.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from clan_vm_tasks import render
from clan_vm_tasks.backends.libvirt import remote
from clan_vm_tasks.backends.libvirt.connection import display
from clan_vm_tasks.backends.libvirt.domain import owner_id
from clan_vm_tasks.backends.libvirt.remote import (
    DIGEST,
    SSHTarget,
    is_roots_dir,
    roots_dir,
    ssh_target,
)
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.nix import command
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import Store, runtime_root

# Nix runs "ssh" from PATH; this stand-in runs the host's ssh program instead, with the
# host's options (a JSON list: each option one word, never split) before Nix's arguments,
# and PATH as it was (so that program's own "ssh" is the real one).
_SHIM = (
    f"#!{sys.executable} -IS\n"
    "import json, os, sys\n"
    "os.environ['PATH'] = os.environ.pop('CLAN_VM_SSH_PATH', '')\n"
    "program = os.environ.pop('CLAN_VM_SSH_PROGRAM')\n"
    "options = json.loads(os.environ.pop('CLAN_VM_SSH_OPTIONS'))\n"
    "os.execv(program, [program, *options, *sys.argv[1:]])\n"
).encode()


def _shim_dir() -> Path:
    files.private_dir(runtime_root())
    directory = files.private_dir(
        runtime_root() / f"ssh-shim-{hashlib.sha256(_SHIM).hexdigest()[:12]}"
    )
    if not (directory / "ssh").exists():
        files.atomic_write(directory / "ssh", _SHIM, mode=0o700)
    return directory


def _env(target: SSHTarget) -> dict[str, str]:
    path = os.environ.get("PATH", "/usr/bin:/bin")
    return {
        **os.environ,
        "PATH": f"{_shim_dir()}:{path}",
        "CLAN_VM_SSH_PATH": path,
        "CLAN_VM_SSH_PROGRAM": target.program(),
        "CLAN_VM_SSH_OPTIONS": json.dumps(target.options()),
        "NIX_SSHOPTS": "",  # Nix splits it at spaces: nothing of ours goes there
    }


def send(
    store: Store, name: str, uri: str, paths: list[str], previous: dict[str, Any], running: bool
) -> dict[str, Any] | None:
    """Copy PATHS (with their closure) to URI's host and root them there for VM NAME; the
    record of those roots for ``origin.json``, or None when the host is this machine.
    PREVIOUS is the record of the last send: its roots go unless the VM RUNNING uses them."""
    target = ssh_target(uri)
    if target is None or not paths:
        return None
    where = display(uri)
    progress = render.progress()
    progress.phase(f"copying {name}'s store paths to {where}")
    try:
        command.run(
            ["copy", "--to", target.store_uri(), *paths],
            what=f"copying the store paths of VM '{name}' to host {where}",
            env=_env(target),
        )
    finally:
        progress.done()
    directory = roots_dir(owner_id(store.root), name)
    digest = hashlib.sha256("\0".join(sorted(paths)).encode()).hexdigest()[:16]
    rooting = f"keeping the store paths of VM '{name}' on host {where}"
    root = f"{directory}/{digest}/root"
    add = ["nix-store", "--realise", "--add-root", root, "--indirect", *sorted(paths)]
    remote.run(target, *add, what=rooting)
    old = previous.get("digest") if previous.get("dir") == directory else None
    if isinstance(old, str) and DIGEST.fullmatch(old) and old != digest and not running:
        remote.run(target, "rm", "-rf", f"{directory}/{old}", what=rooting)
    return {"uri": uri, "dir": directory, "digest": digest}


def forget(record: dict[str, Any], name: str) -> str | None:
    """Drop the roots on the host of deleted VM NAME; a warning when the host did not."""
    uri, directory = record.get("uri"), record.get("dir")
    if not isinstance(uri, str) or not isinstance(directory, str):
        return None
    if not is_roots_dir(directory, name):  # a record changed by hand names nothing else
        return None
    where = f"the GC roots of VM '{name}' on host {display(uri)}"
    try:
        target = ssh_target(uri)
        if target is not None:
            remote.run(target, "rm", "-rf", directory, what=f"removing {where}")
    except (ClanVMError, ValueError) as error:
        return f"warning: {error}: remove ~/{directory} there"
    return None
