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


def networks(ifname: str) -> list[tuple[Network, Address | None]]:
    """(address/prefix, point-to-point peer or None) of each address of IFNAME."""
    ip = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if ip is None:
        raise ClanVMError("the ip command is missing (Debian: iproute2)")
    result = subprocess.run(
        [ip, "-j", "addr", "show", "dev", ifname],
        capture_output=True,
        text=True,
        check=False,
        env={"LC_ALL": "C"},
    )
    if result.returncode != 0:
        return []
    try:
        found: Any = json.loads(result.stdout or "[]")
    except ValueError:
        return []
    out: list[tuple[Network, Address | None]] = []
    for link in found if isinstance(found, list) else []:
        for info in link.get("addr_info", []) if isinstance(link, dict) else []:
            try:
                local = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
                peer = info.get("address")
                out.append((local, ipaddress.ip_address(peer) if peer else None))
            except (KeyError, TypeError, ValueError):
                continue
    return out
