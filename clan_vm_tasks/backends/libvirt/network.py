"""Port forwards of a VM on a libvirt host, added to its running QEMU.

Debian 12's libvirt ignores ``<portForward>`` on user-mode interfaces and has passt
disabled, so forwards are added over QEMU's monitor (``hostfwd_add``) once QEMU runs,
and again whenever QEMU restarts (a start, a revert to a snapshot with memory). A forward
binds on the libvirt host: on 127.0.0.1 when that host is this machine, on all of its
addresses when it is another one, since that is where the inventory's ``targetHost``
reaches it from (the host's firewall decides who else may).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from clan_vm_tasks.backends.libvirt.connection import Host, qemu_lib
from clan_vm_tasks.backends.libvirt.domain_xml import NETDEV
from clan_vm_tasks.backends.ports import candidates as auto_candidates
from clan_vm_tasks.errors import ClanVMError

if TYPE_CHECKING:
    from clan_vm_tasks.models import PortForward

_LOCAL_NAMES = ("", "localhost", "127.0.0.1", "::1")
_FORWARD = re.compile(r"(tcp|udp):([^:]+):(\d+)->(\d+)")
_USERNET = re.compile(r"(TCP|UDP)\[HOST_FORWARD\]\s+\d+\s+(\S+)\s+(\d+)\s+\S+\s+(\d+)")


def address(uri: str) -> str:
    """Where a forwarded port of a VM on URI's host is reached from here."""
    name = urlsplit(uri).hostname or ""
    return "127.0.0.1" if name in _LOCAL_NAMES else name


def _bind(uri: str) -> str:
    return "127.0.0.1" if address(uri) == "127.0.0.1" else "0.0.0.0"


def _monitor(host: Host, dom: Any, command: str) -> str:
    libvirt_qemu = qemu_lib()
    flags = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
    return str(host.call(libvirt_qemu.qemuMonitorCommand, dom, command, flags)).strip()


def _previous(forwards: list[str]) -> dict[tuple[str, int], int]:
    ports = {}
    for text in forwards:
        found = _FORWARD.fullmatch(text)
        if found:
            ports[(found.group(1), int(found.group(4)))] = int(found.group(3))
    return ports


def add(host: Host, dom: Any, wanted: list[PortForward], previous: list[str]) -> list[str]:
    """Add WANTED to the running domain; "auto" ports take the previous boot's port while it
    is free, else a random free one. Returns them as ``tcp:ADDRESS:PORT->GUEST``."""
    bind, shown = _bind(host.uri), address(host.uri)
    before = _previous(previous)
    added = []
    for forward in wanted:
        if forward.host_port == "auto":
            candidates = auto_candidates(before.get((forward.protocol, forward.guest_port)))
        else:
            candidates = [forward.host_port]
        for port in candidates:
            rule = f"{forward.protocol}:{bind}:{port}-:{forward.guest_port}"
            answer = _monitor(host, dom, f"hostfwd_add {NETDEV} {rule}")
            if not answer:  # QEMU says nothing when it worked
                added.append(f"{forward.protocol}:{shown}:{port}->{forward.guest_port}")
                break
        else:
            raise ClanVMError(
                f"cannot forward {forward.protocol} port {candidates[-1]} on host "
                f"{host.label} to guest port {forward.guest_port}: {answer}"
            )
    return added


def current(host: Host, dom: Any) -> list[str]:
    """The forwards the running QEMU has, as ``add`` returns them."""
    shown = address(host.uri)
    found = []
    for line in _monitor(host, dom, "info usernet").splitlines():
        match = _USERNET.search(line)
        if match:
            found.append(f"{match.group(1).lower()}:{shown}:{match.group(3)}->{match.group(4)}")
    return found
