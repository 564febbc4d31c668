"""What a flake may do on this host, decided before anything is built or changed.

A flake is someone else's code. It may name only files in the Nix store; it may pass
extra arguments to QEMU (which can run host programs or open host files) and share host
directories with the guest only when the user allows it: on the command line, in the
settings file, or before for exactly these arguments and directories (remembered in the
VM's origin record). One function per decision; ``nix.prepare`` asks them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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
    shares: dict[str, list[str]] | None = None

    def remembered(self, origin: Origin) -> Origin:
        return origin.replace(allowed_qemu_args=self.qemu_args, allowed_shares=self.shares)


def check(request: Request, flake: Flake, config: VMConfig, origin: Origin) -> Allowed:
    """Every decision for CONFIG: refused (InvalidInput, naming what and how to allow it)
    or what was allowed."""
    check_store_files(config)
    return Allowed(
        qemu_args=allow_qemu_args(request, flake, config, origin),
        shares=allow_shares(request, flake, config, origin),
    )


def check_store_files(config: VMConfig) -> None:
    """The kernel, initrd and base image must be files in the Nix store (a path in the flake
    such as ./vmlinuz, or a derivation), never a host path like /etc/shadow."""
    for field, attribute in STORE_FILES:
        value = getattr(config, field)
        if value is not None and not str(value).startswith(STORE_DIR + "/"):
            raise InvalidInput(
                f"{where(config.name)}.{attribute} is {value}, a file outside the Nix store; a "
                "flake may only name files in the store (a path in the flake like ./vmlinuz, "
                "or a derivation)"
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


def allow_shares(
    request: Request, flake: Flake, config: VMConfig, origin: Origin
) -> dict[str, list[str]] | None:
    """The host directories the flake shares with the guest, if the user allows them (None:
    it shares none)."""
    shares, name = host_shares(config), config.name
    if not shares:
        return None
    if (
        request.allow_shares
        or origin.allowed_shares == shares
        or {name, "*"} & set(request.settings.allow_shares)
    ):
        return shares
    seen = ", ".join(f"{source} ({how})" for source, how in sorted(shares.values()))
    raise InvalidInput(
        f"{where(name)}.shares of {flake.label} would let the VM see {seen} of this "
        "host; allow it for this VM with --allow-shares, or with "
        f"'allow_shares: [{name}]' in the settings file"
    )


def host_shares(config: VMConfig) -> dict[str, list[str]]:
    """The shares that expose a directory of the host: all but the VM's own directories and
    read-only ones from the Nix store (world-readable anyway)."""
    found = {}
    for tag, share in sorted(config.shares.items()):
        if share.source is None:
            continue
        source = str(share.source)
        # Where it leads, not how it is spelled: a store path may be a link out of the store.
        resolved, store = os.path.realpath(source), os.path.realpath(STORE_DIR)
        in_store = resolved == store or resolved.startswith(store + "/")
        if in_store and share.read_only:
            continue
        found[tag] = [source, "read-only" if share.read_only else "writable"]
    return found
