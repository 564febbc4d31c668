"""Real libvirt hosts for the tests, on this machine and without systemd.

- Host A is this machine's own libvirtd (``qemu:///system``), started with virtlogd and
  given a ``default`` storage pool when none runs; it is left running, like a service.
- Each test worker reaches host A as a "remote" host too: ``qemu+ssh://`` to an sshd it
  starts on 127.0.0.1 with a generated host key and client key.
- Host B is a second, independent libvirtd (with its own virtlogd and sshd) in a mount
  namespace of its own: /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt,
  /var/cache/libvirt and /nix (an empty Nix store) are bind mounts of a directory of the
  worker. It is reached only
  through its sshd, as a remote host would be, and stopped at the end of the session.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clan_vm_tasks.backends.ssh import SSH_OPTIONS, ssh_wrapper

LOCK = Path("/tmp/clan-vm-tests-libvirtd.lock")  # workers start host A's daemons one at a time
LIBVIRT_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}


@dataclass
class Host:
    name: str  # in the tests' settings file
    uri: str
    virsh: list[str]  # how virsh reaches it from here
    sshd_pidfile: Path | None = None
    wrapper: Path | None = None  # the ssh command= of its URI
    pidfiles: list[Path] = field(default_factory=list)  # daemons to stop at the end
    inside: list[str] = field(default_factory=list)  # runs a command on the host (host B)


def missing() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (starts libvirtd and sshd)"
    for tool in ("libvirtd", "virtlogd", "virsh", "/usr/sbin/sshd", "ssh", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./scripts/setup installs it)"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed (./scripts/setup installs it)"
    return None


DAEMONS = ("virtlogd", "libvirtd", "sshd")


def alive(pidfile: Path) -> bool:
    """Whether PIDFILE names a live daemon of ours: a pid file left by one that ended with
    an earlier session may name another process by now (the daemon must then be started)."""
    try:
        pid = int(pidfile.read_text())
        comm, fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
        state = fields.split()[0]
    except (OSError, ValueError, IndexError):
        return False
    # A killed daemon stays a zombie until PID 1 reaps it.
    return comm.partition("(")[2] in DAEMONS and state != "Z"


def sshd_processes(pidfile: Path) -> list[int]:
    """An sshd's listener and every process below it (the sessions it accepted, which a
    connection kept open for later commands goes on using): what a host that went away or
    froze takes with it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [int(pidfile.read_text())]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue += children.get(pid, [])
    return found


def signal_sshd(pidfile: Path, sig: int) -> None:
    for pid in sshd_processes(pidfile):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def virsh(prefix: list[str], *args: str, check: bool = True) -> str:
    result = subprocess.run(
        [*prefix, *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _wait_for_libvirtd(prefix: list[str]) -> None:
    deadline = time.monotonic() + 60
    while subprocess.run([*prefix, "version"], capture_output=True, check=False).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"libvirtd did not answer: {prefix}")
        time.sleep(0.1)


def _ensure_pool(prefix: list[str], target: str = "/var/lib/libvirt/images") -> None:
    if subprocess.run([*prefix, "pool-info", "default"], capture_output=True).returncode:
        virsh(prefix, "pool-define-as", "default", "dir", "--target", target)
        virsh(prefix, "pool-build", "default")
        virsh(prefix, "pool-autostart", "default")
    if "running" not in virsh(prefix, "pool-info", "default"):
        virsh(prefix, "pool-start", "default")


def host_a() -> Host:
    """This machine's libvirtd, started (with virtlogd and its pool) when none runs."""
    prefix = ["virsh", "-q", "-c", "qemu:///system"]
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for directory in ("/var/log/libvirt", "/run/libvirt"):
            os.makedirs(directory, exist_ok=True)
        if not alive(Path("/run/virtlogd.pid")):
            subprocess.run(["virtlogd", "-d"], check=True)
        if not alive(Path("/run/libvirtd.pid")):
            subprocess.run(["libvirtd", "-d"], check=True)
        _wait_for_libvirtd(prefix)
        _ensure_pool(prefix)
    return Host("a", "qemu:///system", prefix)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SSH:
    """Keys and sshd configuration of one worker's "remote" hosts."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "ssh"
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.host_key = self._key("host")
        self.client_key = self._key("client")
        (self.dir / "authorized_keys").write_bytes(Path(f"{self.client_key}.pub").read_bytes())
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.touch()

    def _key(self, name: str) -> Path:
        key = self.dir / f"{name}_ed25519"
        if not key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
            )
        return key

    def config(self, name: str) -> tuple[Path, Path]:
        conf, pidfile = self.dir / f"sshd_{name}.conf", self.dir / f"sshd_{name}.pid"
        conf.write_text(
            f"HostKey {self.host_key}\nPidFile {pidfile}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        )
        return conf, pidfile

    def wrapper(self, name: str, delay: float = 0.0, plain: bool = False) -> Path:
        """The URI's ssh command: the tool's bounded ssh, with our known_hosts pinned (and
        DELAY seconds of latency before it connects, to see hosts asked in parallel).
        PLAIN: ssh as virsh runs it for a user, with the same bounds but a connection of
        its own each time (the benchmarks' baseline)."""
        path = self.dir / f"ssh-{name}{'-plain' if plain else ''}"
        options = ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "LogLevel=ERROR"]
        if plain:
            program = shutil.which("ssh") or "ssh"
            options = [o for option in SSH_OPTIONS for o in ("-o", option)] + options
        else:
            program = ssh_wrapper()
        path.write_text(
            f"#!{sys.executable} -IS\nimport os, sys, time\ntime.sleep({delay})\n"
            f"os.execv({program!r}, [{program!r}, *{options!r}, *sys.argv[1:]])\n"
        )
        path.chmod(0o700)
        return path

    def start_sshd(self, name: str, port: int, inside: list[str]) -> Path:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
        conf, pidfile = self.config(name)
        log = self.dir / f"sshd_{name}.log"
        argv = ["/usr/sbin/sshd", "-f", str(conf), "-p", str(port)]
        argv += ["-o", "ListenAddress=127.0.0.1", "-E", str(log)]
        subprocess.run([*inside, *argv], check=True)  # it daemonizes and writes its pidfile
        deadline = time.monotonic() + 10
        while not alive(pidfile):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd {name} did not start: {log.read_text()}")
            time.sleep(0.05)
        public = Path(f"{self.host_key}.pub").read_text().split()[:2]
        with self.known_hosts.open("a") as known:
            known.write(f"[127.0.0.1]:{port} {' '.join(public)}\n")
        return pidfile

    def uri(
        self, name: str, port: int, delay: float = 0.0, plain: bool = False
    ) -> tuple[str, Path]:
        wrapper = self.wrapper(name, delay, plain)
        query = f"keyfile={self.client_key}&command={wrapper}"
        return f"qemu+ssh://root@127.0.0.1:{port}/system?{query}", wrapper


def ssh_to_a(ssh: SSH, name: str = "a-ssh", delay: float = 0.0) -> Host:
    port = free_port()
    pidfile = ssh.start_sshd(name, port, [])
    uri, wrapper = ssh.uri(name, port, delay)
    return Host(name, uri, ["virsh", "-q", "-c", uri], pidfile, wrapper, [pidfile])


def _prepare_b(base: Path) -> None:
    for sub in (*LIBVIRT_DIRS, "nix"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "lib" / "images").mkdir(exist_ok=True)
    (base / "log" / "qemu").mkdir(exist_ok=True)
    etc = base / "etc"
    if not (etc / "qemu.conf").exists():
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True)
        # Host B starts with none of host A's domains, pools or networks.
        for leftover in ("qemu", "storage"):
            shutil.rmtree(etc / leftover, ignore_errors=True)
            (etc / leftover).mkdir()
    # Host A's probe of QEMU's capabilities, so host B need not spend seconds on its own.
    shutil.copytree("/var/cache/libvirt/qemu", base / "cache" / "qemu", dirs_exist_ok=True)


def host_b(ssh: SSH, base: Path) -> Host:
    """A second libvirtd in a mount namespace of its own, reached through its own sshd."""
    _prepare_b(base)
    port = free_port()
    _conf, sshd_pid = ssh.config("b")
    daemons = {"virtlogd": base / "virtlogd.pid", "libvirtd": base / "libvirtd.pid"}
    mounts = [[str(base / sub), target] for sub, target in LIBVIRT_DIRS.items()]
    # A Nix store of its own, empty at first, as another machine's would be.
    mounts.append([str(base / "nix"), "/nix"])
    # One process in the new namespace mounts and starts the daemons, which keep it alive.
    code = (
        "import subprocess, sys, json\n"
        "mounts, argvs = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "for source, target in mounts:\n"
        "    subprocess.run(['mount', '--bind', source, target], check=True)\n"
        "for argv in argvs:\n"
        "    subprocess.run(argv, check=True)\n"
    )
    argvs = [[name, "-d", "-p", str(pidfile)] for name, pidfile in daemons.items()]
    unshare = ["unshare", "--mount", "--propagation", "private", "--"]
    log = base / "unshare.log"  # a file, not a pipe: the daemons keep what they inherit
    with log.open("w") as errors:
        made = subprocess.run(
            [*unshare, sys.executable, "-c", code, json.dumps(mounts), json.dumps(argvs)],
            stderr=errors,
            check=False,
        )
    if made.returncode != 0:  # e.g. in a chroot, whose "/" cannot be made private
        raise RuntimeError(" ".join(log.read_text().split()))
    deadline = time.monotonic() + 10
    while not alive(daemons["libvirtd"]):
        if time.monotonic() > deadline:
            raise RuntimeError("host B's libvirtd did not start")
        time.sleep(0.05)
    inside = ["nsenter", "--mount", "--target", daemons["libvirtd"].read_text().strip(), "--"]
    local = [*inside, "virsh", "-q", "-c", "qemu:///system"]
    _wait_for_libvirtd(local)
    _ensure_pool(local)
    ssh.start_sshd("b", port, inside)
    uri, wrapper = ssh.uri("b", port)
    pidfiles = [sshd_pid, daemons["libvirtd"], daemons["virtlogd"]]
    return Host("b", uri, ["virsh", "-q", "-c", uri], sshd_pid, wrapper, pidfiles, inside)


_connections: dict[str, Any] = {}


def connection(host: Host) -> Any:
    """A libvirt connection of the tests' own to HOST (one per host: ssh costs a second)."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = _connections.get(host.uri)
    if conn is None or not conn.isAlive():
        conn = _connections[host.uri] = libvirt.open(host.uri)
    return conn


def clear(host: Host, prefix: str) -> None:
    """Destroy and undefine HOST's domains named PREFIX..., delete its volumes named so."""
    import libvirt

    conn = connection(host)
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(prefix):
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    pool = conn.storagePoolLookupByName("default")
    refresh(pool)
    for vol in pool.listAllVolumes(0):
        if vol.name().startswith(prefix):
            vol.delete(0)


def refresh(pool: Any) -> None:
    """Refresh a pool that other workers change at the same time (a refresh then may fail)."""
    import libvirt

    for _ in range(10):
        try:
            pool.refresh(0)
            return
        except libvirt.libvirtError:
            time.sleep(0.1)


def stop(host: Host) -> None:
    """Stop what the tests started for HOST: its running domains (host B), then its daemons."""
    if host.name == "b":
        for name in virsh(host.virsh, "list", "--name", check=False).split():
            virsh(host.virsh, "destroy", name, check=False)
    for pidfile in host.pidfiles:
        if alive(pidfile):
            if pidfile == host.sshd_pidfile:  # with the sessions kept open for later commands
                signal_sshd(pidfile, signal.SIGTERM)
            else:
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
