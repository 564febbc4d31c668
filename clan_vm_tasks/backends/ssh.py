"""ssh from this machine to another, as the tool runs it: bounded (it must connect within
SSH_CONNECT_TIMEOUT, a silent server is dropped), never prompting (BatchMode), each option
its own word, no shell on this side. Used by the libvirt backend (libvirt runs the
wrapper for ``qemu+ssh`` URIs; directories it cannot remove) and by ``nix.remote`` (store
paths copied to a host and rooted there).

A target comes from a libvirt URI: its user, host, port, ``keyfile=``, ``no_verify=`` and
``command=`` (a trusted URI's own ssh program), so a host needs no credentials beyond
those libvirt already uses.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from clan_vm_tasks.errors import ClanVMError, InvalidInput
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import runtime_root

SSH_CONNECT_TIMEOUT = 5
SSH_OPTIONS = (
    f"ConnectTimeout={SSH_CONNECT_TIMEOUT}",
    "ServerAliveInterval=5",
    "ServerAliveCountMax=2",
    "BatchMode=yes",  # never a password or host key prompt: a tool must not wait on one
)
SSH_TIMEOUT = 60.0
SHARE_FOR = 60  # idle seconds a connection to a host stays for the next command
_SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")
# Words as they reach the host's shell (ssh always runs a remote command through one):
# nothing a shell would interpret.
_SAFE = re.compile(r"[A-Za-z0-9+./_=-]+")
# A user and a host name that ssh and Nix cannot take for an option or a URL part.
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")


def display(uri: str) -> str:
    """A URI as messages show it: without its parameters (key files, wrappers)."""
    return uri.split("?", 1)[0]


def ssh_wrapper() -> str:
    """The program libvirt runs instead of ssh: ssh with SSH_OPTIONS first, and one
    connection per host shared by the commands that follow (a ControlMaster kept SHARE_FOR
    idle seconds, as ``ssh NAME`` keeps its own). Its socket is named after everything
    before the host, the host included (user, port, key, host key checking), so a command
    asking for other credentials never rides on a connection made with these. Written once
    per interpreter into the private runtime directory; no shell is involved."""
    directory = files.private_dir(runtime_root())
    script = (
        f"#!{sys.executable} -IS\n"
        "import hashlib, os, sys\n"
        f"options = {[part for o in SSH_OPTIONS for part in ('-o', o)]!r}\n"
        "args = sys.argv[1:]\n"
        "end = args.index('--') + 2 if '--' in args else len(args)\n"
        "key = hashlib.sha256('\\0'.join(args[:end]).encode()).hexdigest()[:20]\n"
        f"control = {str(directory / 'ssh-host-')!r} + key\n"
        "share = ['-o', 'ControlMaster=auto', '-o', 'ControlPath=' + control]\n"
        f"share += ['-o', 'ControlPersist={SHARE_FOR}']\n"
        'os.execvp("ssh", ["ssh", *options, *share, *args])\n'
    ).encode()
    path = directory / f"ssh-bounded-{hashlib.sha256(script).hexdigest()[:12]}"
    if not path.exists():
        files.atomic_write(path, script, mode=0o700)
    return str(path)


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


def output(target: SSHTarget, *remote: str, what: str) -> str:
    """Run REMOTE on the host with ssh and return what it printed; ClanVMError saying WHAT
    failed, and why."""
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
    return proc.stdout


def run(target: SSHTarget, *remote: str, what: str) -> None:
    """Run REMOTE on the host with ssh; ClanVMError saying WHAT failed, and why."""
    output(target, *remote, what=what)
