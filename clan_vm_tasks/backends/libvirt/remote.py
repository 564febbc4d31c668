"""How this machine reaches a remote libvirt host with ssh itself (not through libvirt):
to copy store paths there with Nix and to keep them from the host's garbage collector.

The ssh of a ``qemu+ssh://`` URI is libvirt's: the same user, host, port, key file,
``no_verify`` and ``command=`` (a trusted URI's own ssh program), so the host needs no
credentials beyond those libvirt already uses. A host without ssh (``qemu://``, ``tcp``,
``tls``) cannot receive store paths from here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from clan_vm_tasks.backends.libvirt.connection import display, ssh_wrapper
from clan_vm_tasks.errors import InvalidInput

# The host's own roots directory: its garbage collector keeps what a link there points to.
ROOTS_DIR = "/nix/var/nix/gcroots/clan-vm-tasks"
_SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")
# Store paths and names as they reach the host's shell (ssh always runs a remote command
# through one): nothing a shell would interpret.
_SAFE = re.compile(r"[A-Za-z0-9+./_=?-]+")


@dataclass(frozen=True)
class SSHTarget:
    """A remote host as ssh reaches it."""

    host: str
    user: str | None = None
    port: int | None = None
    keyfile: str | None = None
    command: str | None = None  # the URI's ssh program; None: the tool's bounded ssh
    no_verify: bool = False
    known_hosts: str | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def options(self) -> list[str]:
        """ssh's options besides the key file (Nix takes that as ``ssh-key``)."""
        options = ["-p", str(self.port)] if self.port else []
        if self.no_verify:
            options += ["-o", "StrictHostKeyChecking=no"]
        if self.known_hosts:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        return options

    def program(self) -> str:
        return self.command or ssh_wrapper()

    def argv(self, *remote: str) -> list[str]:
        """ssh running REMOTE (words with nothing a shell would interpret) on the host."""
        for word in remote:
            if not _SAFE.fullmatch(word):
                raise ValueError(f"not safe for a remote shell: {word!r}")
        key = ["-i", self.keyfile] if self.keyfile else []
        return [self.program(), *self.options(), *key, self.destination, "--", *remote]

    def store_uri(self) -> str:
        """The Nix store of the host, as ``nix copy --to`` names it."""
        uri = f"ssh://{self.destination}"
        return uri + (f"?ssh-key={self.keyfile}" if self.keyfile else "")


def ssh_target(uri: str) -> SSHTarget | None:
    """How ssh reaches URI's host; None when the host is this machine (no transport to
    it: it shares this machine's store). InvalidInput for a remote host without ssh."""
    parts = urlsplit(uri)
    if parts.scheme.partition("+")[2] not in _SSH_TRANSPORTS:
        if not parts.hostname:
            return None  # qemu:///system, qemu+unix:///system: this machine
        raise InvalidInput(
            f"host {display(uri)} is not reached with ssh: store paths cannot be copied "
            "there (use a qemu+ssh:// URI)"
        )
    if not parts.hostname:
        raise InvalidInput(f"invalid libvirt URI {display(uri)!r}: no host for ssh to reach")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    return SSHTarget(
        host=parts.hostname,
        user=parts.username,
        port=parts.port,
        keyfile=params.get("keyfile") or None,
        command=params.get("command") or None,
        no_verify=params.get("no_verify") == "1",
        known_hosts=params.get("known_hosts") or None,
    )


def roots_dir(owner: str, name: str) -> str:
    """Where on the host the roots of VM NAME of state directory OWNER live."""
    return f"{ROOTS_DIR}/{hashlib.sha256(owner.encode()).hexdigest()[:16]}-{name}"
