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
import re
import sys
from pathlib import Path

from clan_vm_tasks import render
from clan_vm_tasks.backends import ssh
from clan_vm_tasks.backends.ssh import SSHTarget, display, ssh_target
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.nix import command
from clan_vm_tasks.nix.origin import HostRoots
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import Store, owner_id, runtime_root

# Where on the host the roots live, relative to the login's home (where ssh starts the
# remote command): Nix registers a link there as an indirect root, for any trusted login.
ROOTS_DIR = ".local/state/clan-vm-tasks/gcroots"
DIGEST = re.compile(r"[0-9a-f]{16}")  # names one build's roots in a VM's roots directory

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


def roots_dir(owner: str, name: str) -> str:
    """Where on the host the roots of VM NAME of state directory OWNER live."""
    return f"{ROOTS_DIR}/{hashlib.sha256(owner.encode()).hexdigest()[:16]}-{name}"


def is_roots_dir(directory: str, name: str) -> bool:
    """Whether DIRECTORY (read from a record) is a roots directory of VM NAME, nothing else."""
    return (
        re.fullmatch(re.escape(ROOTS_DIR) + r"/[0-9a-f]{16}-" + re.escape(name), directory)
        is not None
    )


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
    store: Store,
    name: str,
    uri: str,
    paths: list[str],
    previous: HostRoots | None,
    running: bool,
) -> HostRoots | None:
    """Copy PATHS (with their closure) to URI's host and root them there for VM NAME; the
    record of those roots, or None when the host is this machine. PREVIOUS is the record
    of the last send: its roots go unless the VM RUNNING uses them."""
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
    ssh.run(target, *add, what=rooting)
    old = previous.digest if previous is not None and previous.dir == directory else None
    if old is not None and DIGEST.fullmatch(old) and old != digest and not running:
        ssh.run(target, "rm", "-rf", f"{directory}/{old}", what=rooting)
    return HostRoots(uri, directory, digest)


def forget(record: HostRoots, name: str) -> str | None:
    """Drop the roots on the host of deleted VM NAME; a warning when the host did not."""
    uri, directory = record.uri, record.dir
    if not is_roots_dir(directory, name):  # a record changed by hand names nothing else
        return None
    where = f"the GC roots of VM '{name}' on host {display(uri)}"
    try:
        target = ssh_target(uri)
        if target is not None:
            ssh.run(target, "rm", "-rf", directory, what=f"removing {where}")
    except (ClanVMError, ValueError) as error:
        return f"warning: {error}: remove ~/{directory} there"
    return None
