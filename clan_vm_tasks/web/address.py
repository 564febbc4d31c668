"""Where the dashboard listens, and which ``Host`` and ``Origin`` headers belong to it.

Pure functions: a DNS-rebinding page reaches us under its own name, so only the
listen address, ``localhost`` and (listening on every address) this machine's own
names and IP literals are our hosts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass

from clan_vm_tasks.errors import InvalidInput

DEFAULT_LISTEN = "127.0.0.1:8080"


@dataclass(frozen=True)
class Listen:
    host: str  # an IP address (no brackets) or "localhost"
    port: int  # 0: any free port (the bound one replaces it)

    @property
    def loopback(self) -> bool:
        return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback

    @property
    def wildcard(self) -> bool:
        return self.host != "localhost" and ipaddress.ip_address(self.host).is_unspecified

    @property
    def family(self) -> socket.AddressFamily:
        if self.host != "localhost" and ipaddress.ip_address(self.host).version == 6:
            return socket.AF_INET6
        return socket.AF_INET

    def bind_host(self) -> str:
        return "127.0.0.1" if self.host == "localhost" else self.host

    def url_host(self) -> str:
        """The host part of a URL to open: a wildcard listen is reached on this machine."""
        if self.wildcard:
            return socket.gethostname()
        return f"[{self.host}]" if ":" in self.host else self.host


def parse(text: str) -> Listen:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT``; HOST an IP address or ``localhost``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise InvalidInput(f"--listen takes HOST:PORT (e.g. {DEFAULT_LISTEN}), not {text!r}")
    port = int(port_text)
    if port > 65535:
        raise InvalidInput(f"--listen: port {port} is out of range (0-65535)")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    host = host or "127.0.0.1"
    if host.lower() == "localhost":
        return Listen("localhost", port)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(
            f"--listen: {host!r} is not an IP address (use 127.0.0.1, ::1, 0.0.0.0 or an "
            "address of this machine)"
        ) from None
    return Listen(str(address), port)


def _split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header as (host, port); None when it is malformed."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        host, _, port_text = value.partition(":")
    if port_text and not (port_text.isascii() and port_text.isdigit()):
        return None
    return host.lower(), int(port_text) if port_text else None


def host_allowed(listen: Listen, header: str, own_names: frozenset[str] = frozenset()) -> bool:
    """Whether a request's Host header names this server (LISTEN with its bound port)."""
    split = _split_host(header.strip())
    if split is None:
        return False
    host, port = split
    if (port or 80) != listen.port:
        return False
    if host in ("localhost", listen.host.lower()):
        return True
    if not listen.wildcard:
        return False
    if host in own_names:
        return True
    try:
        ipaddress.ip_address(host)  # an IP literal cannot be a rebound name
    except ValueError:
        return False
    return True


def origin_allowed(listen: Listen, origin: str, own_names: frozenset[str] = frozenset()) -> bool:
    """Whether a request's Origin header is a page of this server."""
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme.lower() != "http" or "/" in rest:
        return False
    return host_allowed(listen, rest, own_names)


def own_names() -> frozenset[str]:
    """This machine's names, accepted as Host when listening on every address."""
    names = {socket.gethostname().lower()}
    with contextlib.suppress(OSError):
        names.add(socket.getfqdn().lower())
    return frozenset(names)


def refuse_remote(listen: Listen, allow_remote: bool) -> None:
    if not listen.loopback and not allow_remote:
        raise InvalidInput(
            f"--listen {listen.host}:{listen.port} is reachable from other machines: anyone "
            "who can reach it with the token controls the VMs; add --allow-remote if that "
            "is what you want"
        )
