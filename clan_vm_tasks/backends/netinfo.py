"""This machine's addresses on a network interface (a bridge, a tap), as ``ip`` reports them:
where a guest attached there can be."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from typing import Any

from clan_vm_tasks.errors import ClanVMError

Network = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def command(ifname: str, ip: str = "ip") -> list[str]:
    """``ip`` listing IFNAME's addresses as JSON (on this machine or, over ssh, on a host)."""
    return [ip, "-j", "addr", "show", "dev", ifname]


def parse(text: str) -> list[tuple[Network, Address | None]]:
    """(address/prefix, point-to-point peer or None) of each address in ``ip -j addr``'s
    TEXT; what does not parse is left out. A pure function."""
    try:
        found: Any = json.loads(text or "[]")
    except ValueError:
        return []
    out: list[tuple[Network, Address | None]] = []
    for link in found if isinstance(found, list) else []:
        infos = link.get("addr_info") if isinstance(link, dict) else None
        for info in infos if isinstance(infos, list) else []:
            try:
                local = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
                peer = info.get("address")
                if local.network.prefixlen == 0:
                    continue  # a network of every address is none a guest is known to be in
                out.append((local, ipaddress.ip_address(peer) if peer else None))
            except (AttributeError, KeyError, TypeError, ValueError):
                continue
    return out


def networks(ifname: str) -> list[tuple[Network, Address | None]]:
    """(address/prefix, point-to-point peer or None) of each address of IFNAME on this
    machine ([] when there is no such interface)."""
    ip = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if ip is None:
        raise ClanVMError("the ip command is missing (Debian: iproute2)")
    result = subprocess.run(
        command(ifname, ip), capture_output=True, text=True, check=False, env={"LC_ALL": "C"}
    )
    return parse(result.stdout) if result.returncode == 0 else []
