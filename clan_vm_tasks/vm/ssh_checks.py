"""What ``ssh`` takes from the guest or the command line, checked before it reaches ssh's argv
or a known_hosts file (pure functions).

A user name becomes part of ``USER@HOST`` (a word starting with ``-`` would be an option); a
host key read from the guest becomes the pinned key (it must be one, and small); an address
the guest reports is used only if it lies in the network the VM is attached to.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from collections.abc import Iterable

from clan_vm_tasks.backends.agent_wire import printable
from clan_vm_tasks.errors import InvalidInput

MAX_HOST_KEY = 8 << 10  # bytes of a public host key file we read (an RSA-16384 key is ~2.8 KiB)
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
# POSIX-ish login names (useradd's default rule, plus upper case and dots).
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")

Network = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_user(user: str) -> str:
    if not _USER.fullmatch(user):
        raise InvalidInput(
            f"{user!r} is not a user name (letters, digits, '_', '.', '-', at most 32, "
            "not starting with '-')"
        )
    return user


def host_key(text: bytes) -> tuple[str, str] | str:
    """(type, base64 blob) of an OpenSSH public key line, or why TEXT is none."""
    if len(text) > MAX_HOST_KEY:
        return f"larger than {MAX_HOST_KEY} bytes"
    try:
        words = text.decode("ascii").split()
    except UnicodeDecodeError:
        return "not ASCII text"
    if len(words) < 2 or words[0] not in KEY_TYPES:
        return f"not a public key of a known type ({printable(words[0] if words else '', 40)!r})"
    kind, encoded = words[0], words[1]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return "its key is not valid base64"
    # The blob begins with the key type as an SSH string (a 32-bit length, then the bytes).
    length = struct.unpack(">I", blob[:4])[0] if len(blob) >= 4 else -1
    named = blob[4 : 4 + length] if 0 < length <= 64 else b""
    if len(named) != length or len(blob) == 4 + length:
        return "its key is not an SSH public key"
    if named != kind.encode():
        return "its key does not match its type"
    return kind, encoded


def parse_address(text: str) -> Address | None:
    """TEXT as an IP address, or None (anything else, including a word that could be taken
    for an option)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def usable(address: Address, networks: Iterable[tuple[Network, Address | None]]) -> bool:
    """Whether ADDRESS lies in one of NETWORKS ((the host's own address with its prefix, its
    peer for a point-to-point link)), without being the host's address or the network's own
    or broadcast address."""
    if address.is_loopback or address.is_multicast or address.is_unspecified:
        return False
    for interface, peer in networks:
        if peer is not None and address == peer:
            return True
        net = interface.network
        if address == interface.ip or address not in net:
            continue
        if net.num_addresses > 2 and address in (net.network_address, net.broadcast_address):
            continue
        return True
    return False
