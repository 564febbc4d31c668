"""What a flake may do on this host, decided before anything is built or changed.

A flake is someone else's code. It may name only files really in the Nix store (where a
path leads, not how it is spelled: no '..', links followed, again once built); it may pass
extra arguments to QEMU (which can run host programs or open host files) and share host
directories with the guest only when the user allows it: on the command line, in the
settings file, or before for exactly these arguments and directories (remembered in the
VM's origin record). A share's consent is for the directory it leads to (its path, device
and inode): a source that leads elsewhere later (a link swapped in) is asked about again,
and the VM's definition pins each shared directory's device and inode, so that the launch
hands QEMU the very directory that was checked. One function per decision; ``nix.prepare``
asks them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.models import VMConfig
from clan_vm_tasks.nix.command import STORE_DIR
from clan_vm_tasks.nix.flakes import Flake, where
from clan_vm_tasks.nix.origin import Origin
from clan_vm_tasks.nix.request import Request

# The fields naming a file the host opens, and their attribute in Nix.
STORE_FILES = (("kernel", "kernel"), ("initrd", "initrd"), ("base_image", "baseImage"))


@dataclass(frozen=True)
class Allowed:
    """What the user allowed a VM, to be remembered in its origin record."""

    qemu_args: list[str] | None = None
    shares: dict[str, list[str]] | None = None  # tag -> [where it leads, access, DEV:INO]
    # tag -> DEV:INO of every shared directory as checked now (consent needed or not)
    identities: dict[str, str] = field(default_factory=dict)

    def remembered(self, origin: Origin) -> Origin:
        return origin.replace(allowed_qemu_args=self.qemu_args, allowed_shares=self.shares)


class StoreFileRefused(InvalidInput):
    """A flake named a file the host would open that is not really in the Nix store."""


def check(request: Request, flake: Flake, config: VMConfig, origin: Origin) -> Allowed:
    """Every decision for CONFIG: refused (InvalidInput, naming what and how to allow it)
    or what was allowed."""
    check_store_files(config)
    seen = shared_directories(config)
    return Allowed(
        qemu_args=allow_qemu_args(request, flake, config, origin),
        shares=allow_shares(request, flake, config, origin, seen),
        identities={tag: found.identity for tag, found in seen.items()},
    )


def store_problem(path: str) -> str | None:
    """Why PATH is not a file really in the Nix store (None: it is): not absolute, a '..',
    outside it, or a link (anywhere along it) that leads out of it."""
    if not path.startswith("/"):
        return "not an absolute path"
    if ".." in PurePosixPath(path).parts:
        return "a path with '..'"
    if not path.startswith(STORE_DIR + "/"):
        return "a file outside the Nix store"
    real, store = os.path.realpath(path), os.path.realpath(STORE_DIR)
    if not real.startswith(store + "/"):
        return f"which leads to {real}, a file outside the Nix store"
    return None


def check_store_files(config: VMConfig) -> None:
    """The kernel, initrd and base image must be files really in the Nix store (a path in
    the flake such as ./vmlinuz, or a derivation), never a host file like /etc/shadow, also
    not through '..' or a link; asked again once a derivation's output is built."""
    for name, attribute in STORE_FILES:
        value = getattr(config, name)
        problem = None if value is None else store_problem(str(value))
        if problem:
            raise StoreFileRefused(
                f"{where(config.name)}.{attribute} is {value}, {problem}; a flake may only "
                "name files in the store (a path in the flake like ./vmlinuz, or a derivation)"
            )


def allow_qemu_args(
    request: Request, flake: Flake, config: VMConfig, origin: Origin
) -> list[str] | None:
    """The flake's extra QEMU arguments, if the user allows them (None: there are none)."""
    args, name = list(config.qemu_args), config.name
    if not args:
        return None
    if (
        request.allow_qemu_args
        or origin.allowed_qemu_args == args
        or {name, "*"} & set(request.settings.allow_qemu_args)
    ):
        return args
    raise InvalidInput(
        f"{where(name)}.qemuArgs of {flake.label} would run QEMU with {' '.join(args)!r}, "
        "which can run programs or open files on this host; allow it for this VM with "
        f"--allow-qemu-args, or with 'allow_qemu_args: [{name}]' in the settings file"
    )


@dataclass(frozen=True)
class Shared:
    """A directory a share's source leads to, as it is now."""

    spelled: str  # the source as the definition gives it
    resolved: str  # where it leads (links followed)
    identity: str  # DEV:INO of that directory ("missing" when there is none)
    in_store: bool


def shared_directories(config: VMConfig) -> dict[str, Shared]:
    """Every share with a source of its own, looked at once: where it leads, and which
    directory that is."""
    store = os.path.realpath(STORE_DIR)
    found = {}
    for tag, share in sorted(config.shares.items()):
        if share.source is None:
            continue
        resolved = os.path.realpath(share.source)
        try:
            info = os.stat(resolved)
            identity = f"{info.st_dev}:{info.st_ino}"
        except OSError:
            identity = "missing"
        in_store = resolved == store or resolved.startswith(store + "/")
        found[tag] = Shared(str(share.source), resolved, identity, in_store)
    return found


def allow_shares(
    request: Request,
    flake: Flake,
    config: VMConfig,
    origin: Origin,
    seen: dict[str, Shared] | None = None,
) -> dict[str, list[str]] | None:
    """The host directories the flake shares with the guest, if the user allows them (None:
    it shares none). Consent is for where each source leads (path, device and inode), as
    remembered in ORIGIN; asked for, the question names where it leads."""
    seen = shared_directories(config) if seen is None else seen
    shares, name = host_shares(config, seen), config.name
    if not shares:
        return None
    if (
        request.allow_shares
        or origin.allowed_shares == shares
        or {name, "*"} & set(request.settings.allow_shares)
    ):
        return shares
    named = []
    for tag, (resolved, how, _) in sorted(shares.items()):
        spelled = seen[tag].spelled
        named.append(f"{resolved} ({how}{'' if spelled == resolved else f', as {spelled}'})")
    before = ""
    if origin.allowed_shares:
        before = " (not what was allowed before: where a source leads changed)"
    raise InvalidInput(
        f"{where(name)}.shares of {flake.label} would let the VM see {', '.join(named)} of "
        f"this host{before}; allow it for this VM with --allow-shares, or with "
        f"'allow_shares: [{name}]' in the settings file"
    )


def host_shares(config: VMConfig, seen: dict[str, Shared] | None = None) -> dict[str, list[str]]:
    """tag -> [where it leads, access, DEV:INO] of the shares that expose a directory of the
    host: all but the VM's own directories and read-only ones from the Nix store
    (world-readable anyway)."""
    seen = shared_directories(config) if seen is None else seen
    found = {}
    for tag, directory in seen.items():
        read_only = config.shares[tag].read_only
        if directory.in_store and read_only:
            continue
        how = "read-only" if read_only else "writable"
        found[tag] = [directory.resolved, how, directory.identity]
    return found


def pinned(config: VMConfig, allowed: Allowed) -> VMConfig:
    """CONFIG with each shared directory's device and inode as checked (whatever the
    definition said): the launch hands QEMU that directory or none."""
    shares = {
        tag: replace(share, identity=allowed.identities.get(tag))
        for tag, share in config.shares.items()
    }
    return replace(config, shares=shares)
