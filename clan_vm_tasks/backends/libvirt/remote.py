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
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from clan_vm_tasks.backends.libvirt.connection import display, ssh_wrapper
from clan_vm_tasks.errors import ClanVMError, InvalidInput

SSH_TIMEOUT = 60.0

# Where on the host the roots live, relative to the login's home (where ssh starts the
# remote command): Nix registers a link there as an indirect root, for any trusted login.
ROOTS_DIR = ".local/state/clan-vm-tasks/gcroots"
_SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")
# Store paths and names as they reach the host's shell (ssh always runs a remote command
# through one): nothing a shell would interpret.
_SAFE = re.compile(r"[A-Za-z0-9+./_=-]+")
# A user and a host name that ssh and Nix cannot take for an option or a URL part.
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
DIGEST = re.compile(r"[0-9a-f]{16}")  # names one build's roots in a VM's roots directory


@dataclass(frozen=True)
class SSHTarget:
    """A remote host as ssh reaches it."""

    host: str
    user: str | None = None
    port: int | None = None
    keyfile: str | None = None
    command: str | None = None  # the URI's ssh program; None: the tool's bounded ssh
    no_verify: bool = False

    def options(self) -> list[str]:
        """ssh's options for this host, each its own word (never split by a shell or Nix)."""
        options = ["-p", str(self.port)] if self.port else []
        if self.no_verify:
            options += ["-o", "StrictHostKeyChecking=no"]
        if self.keyfile:
            options += ["-i", self.keyfile]
        if self.user:
            options += ["-l", self.user]
        return options

    def program(self) -> str:
        return self.command or ssh_wrapper()

    def argv(self, *remote: str) -> list[str]:
        """ssh running REMOTE (words with nothing a shell would interpret) on the host."""
        for word in remote:
            if not _SAFE.fullmatch(word):
                raise ValueError(f"not safe for a remote shell: {word!r}")
        return [self.program(), *self.options(), "--", self.host, *remote]

    def store_uri(self) -> str:
        """The Nix store of the host, as ``nix copy --to`` names it: the host alone; user,
        port and key travel as ssh options (see ``nix.remote``), never through Nix's URL."""
        return f"ssh://{self.host}"


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
    host = parts.hostname or ""
    user = unquote(parts.username) if parts.username else None  # as libvirt reads it
    if not _HOST.fullmatch(host) or (user is not None and not _USER.fullmatch(user)):
        raise InvalidInput(
            f"cannot copy store paths to host {display(uri)}: its user and host name must "
            "be letters, digits, '.', '_' and '-' (an IP address, or a name; no IPv6 literal)"
        )
    try:
        port = parts.port
    except ValueError:
        raise InvalidInput(f"invalid libvirt URI {display(uri)!r}: bad port") from None
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    return SSHTarget(
        host=host,
        user=user,
        port=port,
        keyfile=params.get("keyfile") or None,
        command=params.get("command") or None,
        no_verify=params.get("no_verify") == "1",
    )


def roots_dir(owner: str, name: str) -> str:
    """Where on the host the roots of VM NAME of state directory OWNER live."""
    return f"{ROOTS_DIR}/{hashlib.sha256(owner.encode()).hexdigest()[:16]}-{name}"


def is_roots_dir(directory: str, name: str) -> bool:
    """Whether DIRECTORY (read from a record) is a roots directory of VM NAME, nothing else."""
    return (
        re.fullmatch(re.escape(ROOTS_DIR) + r"/[0-9a-f]{16}-" + re.escape(name), directory)
        is not None
    )


def run(target: SSHTarget, *remote: str, what: str) -> None:
    """Run REMOTE on the host with ssh; ClanVMError saying WHAT failed, and why."""
    try:
        proc = subprocess.run(
            target.argv(*remote), capture_output=True, text=True, timeout=SSH_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise ClanVMError(f"{what}: no answer within {SSH_TIMEOUT:g}s") from None
    except (OSError, ValueError) as error:
        raise ClanVMError(f"{what}: {error}") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise ClanVMError(f"{what}: {lines[-1] if lines else f'exit code {proc.returncode}'}")


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
