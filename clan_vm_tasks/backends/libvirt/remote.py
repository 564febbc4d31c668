"""Removing a directory tree on a libvirt host, which libvirt cannot do (it removes only
empty directories): over the URI's ssh, or here when the host is this machine."""

from __future__ import annotations

import shutil

from clan_vm_tasks.backends.ssh import run, ssh_target
from clan_vm_tasks.errors import ClanVMError, InvalidInput


def remove_tree(uri: str, path: str, what: str) -> None:
    """Remove the directory PATH on URI's host with all it holds (libvirt removes only empty
    directories). Neither rm nor rmtree follows a link a guest left there."""
    try:
        target = ssh_target(uri)
    except InvalidInput as error:
        raise ClanVMError(f"{what}: {error}") from None
    if target is not None:
        run(target, "rm", "-rf", "--", path, what=what)
        return
    try:
        shutil.rmtree(path)  # the host is this machine
    except FileNotFoundError:
        pass
    except OSError as error:
        raise ClanVMError(f"{what}: {error}") from None
