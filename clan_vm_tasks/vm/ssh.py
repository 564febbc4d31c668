"""SSH into a guest with a key of the VM's own, its host key pinned through the agent, one
connection reused by every call (a ControlMaster in the VM's runtime directory, as Lima does).

Each VM gets a key pair in ``vms/NAME/ssh/``; the public key is put into the guest user's
``authorized_keys`` through the guest agent, and the guest's host key is read through the
agent too (bounded, and it must parse as a public key) and pinned in a ``known_hosts`` of the
VM's under an alias (``clan-vm-NAME``) rather than a host and port: a VM restarted on another
port is still trusted, and a guest whose key changed is refused by ssh. ssh goes only where
the tool decides: the forward of guest port 22, or an address the agent reports that lies in
the network the VM is attached to; the user's ssh configuration is not read, and ssh never
asks for a password (``BatchMode``).

The first call opens a master connection (waiting for the guest's sshd to answer), which
stays for ``PERSIST`` idle seconds or until the VM stops; later calls go through it without
asking the agent anything. Its socket's name depends on the user, the address and the pinned
key, so a changed key is checked again by a new connection.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

from clan_vm_tasks.backends.agent_wire import printable
from clan_vm_tasks.errors import AgentError, ClanVMError, InvalidInput
from clan_vm_tasks.models import recorded_to
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import guest, machines, ssh_checks
from clan_vm_tasks.vm.agent import Agent, session

HOST_KEYS = tuple(f"/etc/ssh/ssh_host_{kind}_key.pub" for kind in ("ed25519", "ecdsa", "rsa"))
PERSIST = 600  # seconds an idle master connection stays
RETRY = 0.5
CONNECT_TIMEOUT = 10
# What ssh says while the guest's sshd is not listening or not ready yet.
NOT_YET = (
    "Connection refused",
    "Connection reset",
    "Connection closed",
    "Connection timed out",
    "kex_exchange_identification",
    "banner exchange",
    "No route to host",
)
# Run by the guest's shell with the public key on stdin: add it once, with the permissions
# sshd insists on. Exit 3: no /etc/passwd, 4: no such user.
INSTALL_KEY = r"""set -e
user="$1"
[ -r /etc/passwd ] || exit 3
home=
while IFS=: read -r login _ _ _ _ dir _; do
  if [ "$login" = "$user" ]; then home=$dir; break; fi
done < /etc/passwd
[ -n "$home" ] || exit 4
key=$(cat)
keys="$home/.ssh/authorized_keys"
mkdir -p "$home/.ssh"
touch "$keys"
grep -qxF "$key" "$keys" || printf '%s\n' "$key" >> "$keys"
chmod 700 "$home/.ssh"
chmod 600 "$keys"
chown -R "$user" "$home/.ssh"
"""
HELP = "ssh needs a guest with sshd and users (see the README: the Debian test guest has both)"


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


def prepare(store: Store, name: str, user: str, wait: float) -> tuple[Path, Path]:
    """Authorize the VM's key for USER in the guest and pin the guest's host key; returns
    (private key, known_hosts)."""
    key = key_pair(store, name)
    known_hosts = _dir(store, name) / "known_hosts"
    with session(store, name, wait) as agent:
        pinned = None if known_hosts.exists() else _pinned(agent, name)
        public = key.with_suffix(".pub").read_bytes().strip()
        result = guest.run(agent, ["sh", "-c", INSTALL_KEY, "sh", user], 30, stdin=public)
        if result.exit_code in (3, 4):
            what = "no users (no /etc/passwd)" if result.exit_code == 3 else f"no user {user}"
            raise ClanVMError(f"VM '{name}' has {what}: {HELP}")
        if result.exit_code != 0:
            why = result.stderr.decode(errors="replace").strip().splitlines()
            raise ClanVMError(
                f"could not authorize the VM's key for {user} in '{name}': "
                + (printable(why[-1]) if why else f"exit code {result.exit_code}")
            )
        if pinned is not None:
            store.write(known_hosts, pinned)
    return key, known_hosts


def _pinned(agent: Agent, name: str) -> bytes:
    """The known_hosts line of the guest's host key (the first usable one)."""
    problems = []
    for path in HOST_KEYS:
        try:
            text = agent.read_file(path, ssh_checks.MAX_HOST_KEY)
        except AgentError:
            continue  # no such key
        parsed = ssh_checks.host_key(text)
        if isinstance(parsed, tuple):
            return f"{alias(name)} {parsed[0]} {parsed[1]}\n".encode()
        problems.append(
            f"{path} is {parsed}" if parsed.startswith("larger") else f"{path}: {parsed}"
        )
    if problems:
        raise ClanVMError(f"VM '{name}' has no usable SSH host key ({'; '.join(problems)})")
    raise ClanVMError(f"VM '{name}' has no SSH server (no host key in /etc/ssh): {HELP}")


def alias(name: str) -> str:
    return f"clan-vm-{name}"


def forwarded(store: Store, name: str) -> tuple[str, int] | None:
    """(address, port) of the running VM's forward of guest port 22, as recorded at start."""
    found = recorded_to(store.read_state(name).forwards, "tcp", 22)
    return None if found is None else (found[0], int(found[1].host_port))


def target(store: Store, name: str, wait: float) -> tuple[str, int]:
    """Where to reach the guest's sshd: the forward of guest port 22, else an address the
    agent reports in the network the VM is attached to."""
    found = forwarded(store, name)
    if found is not None:
        return found
    config = store.read_config(name)
    network = config.get("network") or {}
    mode = network.get("mode")
    if mode in ("user", "nat", None):
        raise ClanVMError(
            f"VM '{name}' forwards no port to the guest's port 22; add one "
            "(--forward tcp:auto:22, or network.forwardPorts in Nix)"
        )
    if mode == "none":
        raise ClanVMError(f"VM '{name}' has no network (network mode none): use exec or console")
    with session(store, name, wait) as agent:
        reported = agent.addresses()
    backend = machines.backend_of(store, name)
    ifname = str(network.get("tap") if mode == "tap" else network.get("bridge") or "clan-br0")
    networks = backend.networks(ifname)
    on = f" on host {backend.label}" if backend.label else ""
    where = f"the network of {ifname}{on} ({', '.join(str(n) for n, _ in networks) or 'none'})"
    for entry in reported:
        address = ssh_checks.parse_address(entry.address)
        if address is not None and address.version == 4 and ssh_checks.usable(address, networks):
            return str(address), 22
    shown = ", ".join(printable(a.address, 60) for a in reported) or "none"
    raise ClanVMError(
        f"the guest agent of VM '{name}' reports no IPv4 address in {where} (it reports: {shown})"
    )


def _control(store: Store, name: str, user: str, address: str, port: int, pinned: Path) -> Path:
    """The master connection's socket (short: unix socket paths have 108 bytes), named after
    what it was opened with."""
    try:
        key = pinned.read_bytes()
    except FileNotFoundError:
        key = b""
    digest = hashlib.sha256(f"{user}\0{address}\0{port}\0".encode() + key).hexdigest()[:16]
    return files.private_dir(store.paths(name).run) / f"ssh-{digest}"


def _argv(ssh: str, name: str, key: Path, known_hosts: Path, address: str, port: int) -> list[str]:
    options = {
        "IdentitiesOnly": "yes",
        "IdentityFile": str(key),
        "UserKnownHostsFile": str(known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "HostKeyAlias": alias(name),
        "BatchMode": "yes",
        "ConnectTimeout": str(CONNECT_TIMEOUT),
        "ServerAliveInterval": "5",
        "ServerAliveCountMax": "3",
    }
    argv = [ssh, "-F", "/dev/null", "-p", str(port)]
    for option, value in options.items():
        argv += ["-o", f"{option}={value}"]
    return argv


def _master_alive(argv: list[str], control: Path, destination: str) -> bool:
    if not control.exists():
        return False
    check = [*argv, "-o", f"ControlPath={control}", "-O", "check", destination]
    return subprocess.run(check, capture_output=True, check=False, timeout=10).returncode == 0


def _open_master(argv: list[str], control: Path, destination: str, deadline: float) -> str | None:
    """Open the master connection, retrying while sshd does not answer yet; None once it is
    open, else what ssh last said (a refusal that waiting does not change, or the deadline)."""
    log = control.with_name(control.name + ".log")
    master = [*argv, "-o", f"ControlPath={control}", "-o", f"ControlPersist={PERSIST}"]
    master += ["-M", "-N", "-f", "-E", str(log), destination]
    while True:
        log.unlink(missing_ok=True)
        ran = subprocess.run(
            master,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=CONNECT_TIMEOUT * 3,
        )
        said = log.read_text(errors="replace").strip() if log.exists() else ""
        if ran.returncode == 0:
            return None
        last = said.splitlines()[-1] if said else f"ssh exited {ran.returncode}"
        if not any(word in said for word in NOT_YET) or time.monotonic() >= deadline:
            return last
        time.sleep(RETRY)


def connect(
    store: Store, name: str, user: str, timeout: float, *, ready_only: bool = False
) -> list[str]:
    """The ssh command line for VM NAME (nothing runs through a shell on the host), with a
    master connection open (waiting up to TIMEOUT for the agent and the guest's sshd).
    READY_ONLY: an error when it cannot be opened (``start --wait-for-ssh``)."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise ClanVMError("ssh is missing (Debian: openssh-client)")
    ssh_checks.check_user(user)
    deadline = time.monotonic() + timeout
    address, port = target(store, name, timeout)
    destination = f"{user}@{address}"
    folder = store.paths(name).dir / "ssh"
    key, known_hosts = folder / "id_ed25519", folder / "known_hosts"
    argv = _argv(ssh, name, key, known_hosts, address, port)
    control = _control(store, name, user, address, port, known_hosts)
    if not (key.exists() and _master_alive(argv, control, destination)):
        prepare(store, name, user, max(1.0, deadline - time.monotonic()))
        control = _control(store, name, user, address, port, known_hosts)
        problem = _open_master(argv, control, destination, deadline)
        if problem is not None:
            waited = any(word in problem for word in NOT_YET)
            if ready_only or waited:
                raise ClanVMError(
                    f"the SSH server of VM '{name}' did not answer"
                    + (f" within {timeout:g}s" if waited else "")
                    + f": {printable(problem)}"
                )
            return [*argv, destination]  # ssh itself says what is wrong, with its exit code
    return [*argv, "-o", f"ControlPath={control}", "-o", "ControlMaster=no", destination]


def command(store: Store, name: str, user: str, remote: list[str], timeout: float) -> list[str]:
    argv = connect(store, name, user, timeout)
    return [*argv, *(["--", *remote] if remote else [])]


def wait_ready(store: Store, name: str, timeout: float, user: str | None = None) -> None:
    """Until the guest's sshd answers with the pinned host key and takes the VM's key."""
    chosen = user or str(store.read_config(name).get("ssh_user") or "root")
    try:
        connect(store, name, chosen, timeout, ready_only=True)
    except InvalidInput as error:
        raise ClanVMError(str(error)) from None
