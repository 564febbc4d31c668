"""Host-side networking for one boot: free ports for ``auto`` forwards, bridges and taps.

Everything here runs around a launch: ``prepare`` decides what QEMU gets (ports
chosen, tap made) and ``delete_tap`` undoes what a boot left on the host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from clan_vm_tasks.backends.ports import AUTO_PORTS, candidates
from clan_vm_tasks.errors import ClanVMError, InvalidInput
from clan_vm_tasks.names import sha256
from clan_vm_tasks.state import files
from clan_vm_tasks.state.store import runtime_root

if TYPE_CHECKING:  # not at run time: reconcile (and so list) may remove taps, and loads no models
    from clan_vm_tasks.models import PortForward, VMConfig

SYS_NET = Path("/sys/class/net")
BRIDGE_CONF = Path("/etc/qemu/bridge.conf")
PORT_LOCK_TIMEOUT = 120.0


@dataclass(frozen=True)
class NetPlan:
    config: VMConfig  # with every "auto" host port replaced by the chosen port
    tap: str | None  # a tap we made for a bridged NIC (removed when the VM stops)
    forwards: list[str]  # as reported by show/status while the VM runs


def _ip(*args: str) -> None:
    ip = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if ip is None:
        raise ClanVMError("the ip command is missing (Debian: iproute2)")
    result = subprocess.run(
        [ip, *args], capture_output=True, text=True, check=False, env={"LC_ALL": "C"}
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise ClanVMError(
            f"ip {' '.join(args)} failed: {lines[-1] if lines else result.returncode}"
        )


def exists(ifname: str) -> bool:
    return (SYS_NET / ifname).exists()


def tap_name(vm_dir: Path) -> str:
    """A tap name that fits IFNAMSIZ and differs per VM directory (so per state dir too)."""
    return "cvm" + sha256(str(vm_dir).encode()).hex()[:12]


def ensure_bridge(bridge: str) -> None:
    """Make BRIDGE exist; only root can create it, anyone else gets the recipe."""
    if exists(bridge):
        if not (SYS_NET / bridge / "bridge").is_dir():
            raise InvalidInput(f"network interface {bridge} exists but is not a bridge")
        return
    if os.geteuid() != 0:
        raise ClanVMError(
            f"bridge {bridge} does not exist and only root can create it; as root run: "
            f"ip link add {bridge} type bridge && ip link set {bridge} up && "
            f"echo 'allow {bridge}' >> {BRIDGE_CONF}"
        )
    _ip("link", "add", bridge, "type", "bridge")
    _ip("link", "set", bridge, "up")


def _helper_allows(bridge: str) -> bool:
    try:
        lines = BRIDGE_CONF.read_text().splitlines()
    except OSError:
        return False
    return any(line.split() in (["allow", bridge], ["allow", "all"]) for line in lines)


def make_tap(tap: str, bridge: str) -> None:
    delete_tap(tap)  # a previous boot that crashed may have left it behind
    _ip("tuntap", "add", "dev", tap, "mode", "tap")
    try:
        _ip("link", "set", tap, "master", bridge)
        _ip("link", "set", tap, "up")
    except ClanVMError:
        delete_tap(tap)
        raise


def delete_tap(tap: str) -> None:
    if exists(tap):
        with contextlib.suppress(ClanVMError):
            _ip("link", "delete", tap)


def _bind_free(protocol: str, port: int) -> socket.socket | None:
    """A socket bound to 127.0.0.1:PORT, or None when PORT is taken."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def _previous_port(previous: list[str], wanted: PortForward) -> int:
    """The host port the last boot chose for the "auto" forward WANTED (0 if none)."""
    from clan_vm_tasks.models import recorded_to

    found = recorded_to(previous, wanted.protocol, wanted.guest_port, wanted.guest_address)
    return 0 if found is None else int(found[1].host_port)


def _bind_auto(wanted: PortForward, previous: list[str]) -> socket.socket:
    """A socket bound to the port an ``auto`` forward gets (see ``backends.ports``)."""
    tried = candidates(_previous_port(previous, wanted))
    for port in tried:
        sock = _bind_free(wanted.protocol, port)
        if sock is not None:
            return sock
    low, high = AUTO_PORTS
    raise ClanVMError(
        f"no free {wanted.protocol} port for guest port {wanted.guest_port} on 127.0.0.1 in "
        f"{low}-{high} ({len(tried)} tried)"
    )


@contextlib.contextmanager
def prepare(config: VMConfig, vm_dir: Path, previous: list[str]) -> Iterator[NetPlan]:
    """Host resources for one launch, held for the duration of the with-block.

    ``auto`` ports: the port of the previous boot (PREVIOUS, as in ``forwards``) while
    it is free, else a free one from ``backends.ports.AUTO_PORTS``. A user-wide lock is
    held from choosing until the caller has launched QEMU and it listens, so VMs started
    in parallel never pick the same port. A tap made here is removed again if the block fails.
    """
    network = config.network
    tap: str | None = None
    if network.mode == "tap":
        assert network.tap is not None
        if not (SYS_NET / network.tap / "tun_flags").exists():
            raise ClanVMError(
                f"tap device {network.tap} does not exist; create it first: "
                f"ip tuntap add dev {network.tap} mode tap user {os.getuid()}"
            )
    elif network.mode == "bridge":
        bridge = network.bridge or "clan-br0"
        ensure_bridge(bridge)
        if os.geteuid() == 0:
            tap = tap_name(vm_dir)
            make_tap(tap, bridge)
        elif not _helper_allows(bridge):
            raise ClanVMError(
                f"qemu-bridge-helper may not use {bridge}: as root add 'allow {bridge}' "
                f"to {BRIDGE_CONF}"
            )
    auto = [f for f in network.forward_ports if f.host_port == "auto"]
    try:
        if not auto:
            yield NetPlan(config, tap, [str(f) for f in network.forward_ports])
            return
        lock = files.private_dir(runtime_root()) / "ports.lock"
        with files.locked(lock, "port allocation", PORT_LOCK_TIMEOUT):
            held: list[socket.socket] = []
            try:
                for forward in auto:
                    held.append(_bind_auto(forward, previous))
                chosen = iter([s.getsockname()[1] for s in held])
            finally:
                for sock in held:
                    sock.close()  # QEMU binds them next, while we still hold the lock
            forwards = [
                replace(f, host_port=next(chosen)) if f.host_port == "auto" else f
                for f in network.forward_ports
            ]
            resolved = replace(config, network=replace(network, forward_ports=forwards))
            yield NetPlan(resolved, tap, [str(f) for f in forwards])
    except BaseException:
        if tap is not None:
            delete_tap(tap)
        raise
