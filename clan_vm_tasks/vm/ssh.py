"""SSH into a guest with a key of the VM's own, its host key pinned through the agent.

Each VM gets a key pair in ``vms/NAME/ssh/``; the public key is put into the guest
user's ``authorized_keys`` through the guest agent, and the guest's host key is read
through the agent too and pinned in a ``known_hosts`` of the VM's, under an alias
(``clan-vm-NAME``) rather than a host and port: a VM restarted on another port is
still trusted, and a guest whose key changed is refused by ssh.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from clan_vm_tasks.backends.base import GuestAgent
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import guest

HOST_KEYS = ("/etc/ssh/ssh_host_ed25519_key.pub", "/etc/ssh/ssh_host_ecdsa_key.pub")
# Run by the guest's own shell with the public key on stdin: add it once, with the
# permissions sshd insists on.
INSTALL_KEY = r"""set -e
user="$1"
home=$(awk -F: -v u="$user" '$1 == u { print $6 }' /etc/passwd)
[ -n "$home" ] || { echo "no user $user in the guest" >&2; exit 3; }
key=$(cat)
keys="$home/.ssh/authorized_keys"
mkdir -p "$home/.ssh"
touch "$keys"
grep -qxF "$key" "$keys" || printf '%s\n' "$key" >> "$keys"
chmod 700 "$home/.ssh"
chmod 600 "$keys"
chown -R "$user" "$home/.ssh"
"""
# As recorded: the address is 127.0.0.1 here, a libvirt host's own address for a VM there.
_FORWARD_22 = re.compile(r"tcp:([^:]+):(\d+)->22")


def _dir(store: Store, name: str) -> Path:
    return files.private_dir(store.paths(name).dir / "ssh")


def key_pair(store: Store, name: str) -> Path:
    """The VM's private key, made on first use."""
    key = _dir(store, name) / "id_ed25519"
    if not key.exists():
        keygen = shutil.which("ssh-keygen")
        if keygen is None:
            raise ClanVMError("ssh-keygen is missing (Debian: openssh-client)")
        partial = key.with_name("id_ed25519.new")
        for stale in (partial, partial.with_suffix(".new.pub")):
            stale.unlink(missing_ok=True)
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"clan-vm-{name}", "-f", str(partial)],
            check=True,
            capture_output=True,
        )
        partial.with_name("id_ed25519.new.pub").replace(key.with_suffix(".pub"))
        partial.replace(key)
    return key


def prepare(store: Store, name: str, user: str) -> tuple[Path, Path]:
    """Authorize the VM's key for USER in the guest and pin the guest's host key; returns
    (private key, known_hosts)."""
    key = key_pair(store, name)
    known_hosts = _dir(store, name) / "known_hosts"
    with guest.session(store, name) as agent:
        public = key.with_suffix(".pub").read_bytes().strip()
        result = guest.run(agent, ["sh", "-c", INSTALL_KEY, "sh", user], 30, stdin=public)
        if result.exit_code != 0:
            why = result.stderr.decode(errors="replace").strip().splitlines()
            raise ClanVMError(
                f"could not authorize the VM's key for {user} in '{name}': "
                + (why[-1] if why else f"exit code {result.exit_code}")
            )
        if not known_hosts.exists():
            files.atomic_write(known_hosts, _pinned(agent, name))
    return key, known_hosts


def _pinned(agent: GuestAgent, name: str) -> bytes:
    for path in HOST_KEYS:
        try:
            text = guest.read_small(agent, path).decode().split()
        except ClanVMError:
            continue
        if len(text) >= 2:
            return f"{alias(name)} {text[0]} {text[1]}\n".encode()
    raise ClanVMError(f"VM '{name}' has no SSH host key (is openssh-server installed?)")


def alias(name: str) -> str:
    return f"clan-vm-{name}"


def forwarded(store: Store, name: str) -> tuple[str, int] | None:
    """(address, port) of the running VM's forward of guest port 22, as recorded at start."""
    for forward in store.read_state(name).forwards:
        found = _FORWARD_22.fullmatch(forward)
        if found:
            return found.group(1), int(found.group(2))
    return None


def target(store: Store, name: str) -> tuple[str, int]:
    """Where to reach the guest's sshd: the forward of guest port 22, else its address."""
    found = forwarded(store, name)
    if found is not None:
        return found
    network = store.read_config(name).get("network") or {}
    if network.get("mode") in ("user", "nat", None):
        raise ClanVMError(
            f"VM '{name}' forwards no port to the guest's port 22; add one "
            "(--forward tcp:auto:22, or network.forwardPorts in Nix)"
        )
    addresses = guest.interfaces(store, name)
    if not addresses:
        raise ClanVMError(f"the guest agent of '{name}' reports no IPv4 address")
    return addresses[0], 22


def command(store: Store, name: str, user: str, remote: list[str]) -> list[str]:
    """The ssh command line for VM NAME (nothing runs through a shell on the host)."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise ClanVMError("ssh is missing (Debian: openssh-client)")
    key, known_hosts = prepare(store, name, user)
    address, port = target(store, name)
    options = {
        "IdentitiesOnly": "yes",
        "IdentityFile": str(key),
        "UserKnownHostsFile": str(known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "HostKeyAlias": alias(name),
        "BatchMode": "no",
    }
    argv = [ssh, "-p", str(port)]
    for option, value in options.items():
        argv += ["-o", f"{option}={value}"]
    return [*argv, f"{user}@{address}", *(["--", *remote] if remote else [])]
