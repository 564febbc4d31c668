"""Which listen addresses, Host and Origin headers the dashboard takes (pure functions)."""

from __future__ import annotations

import pytest

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.web.address import Listen, host_allowed, origin_allowed, parse, refuse_remote


@pytest.mark.parametrize(
    ("text", "host", "port", "loopback"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, True),
        (":9000", "127.0.0.1", 9000, True),
        ("localhost:80", "localhost", 80, True),
        ("[::1]:8080", "::1", 8080, True),
        ("0.0.0.0:8080", "0.0.0.0", 8080, False),
        ("192.0.2.7:0", "192.0.2.7", 0, False),
    ],
)
def test_listen_addresses(text: str, host: str, port: int, loopback: bool) -> None:
    listen = parse(text)
    assert (listen.host, listen.port, listen.loopback) == (host, port, loopback)


@pytest.mark.parametrize("text", ["8080", "example.com:80", "127.0.0.1:http", "1.2.3.4:70000", ""])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse(text)


def test_a_reachable_address_needs_allow_remote() -> None:
    with pytest.raises(InvalidInput, match="anyone who can reach it with the token"):
        refuse_remote(parse("0.0.0.0:8080"), allow_remote=False)
    refuse_remote(parse("0.0.0.0:8080"), allow_remote=True)
    refuse_remote(parse("127.0.0.1:8080"), allow_remote=False)


LOCAL = Listen("127.0.0.1", 8080)
ANY = Listen("0.0.0.0", 8080)


@pytest.mark.parametrize(
    ("listen", "header", "allowed"),
    [
        (LOCAL, "127.0.0.1:8080", True),
        (LOCAL, "localhost:8080", True),
        (LOCAL, "LOCALHOST:8080", True),
        (LOCAL, "127.0.0.1:8081", False),  # another port: another server
        (LOCAL, "127.0.0.1", False),  # port 80
        (LOCAL, "evil.example:8080", False),  # DNS rebinding: the attacker's name
        (LOCAL, "127.0.0.2:8080", False),
        (LOCAL, "", False),
        (LOCAL, "127.0.0.1:80:80", False),
        (Listen("::1", 8080), "[::1]:8080", True),
        (Listen("localhost", 80), "localhost", True),
        (ANY, "192.0.2.7:8080", True),  # an IP literal cannot be a rebound name
        (ANY, "[2001:db8::1]:8080", True),
        (ANY, "myhost:8080", True),  # this machine's own name
        (ANY, "evil.example:8080", False),
    ],
)
def test_host_headers(listen: Listen, header: str, allowed: bool) -> None:
    assert host_allowed(listen, header, frozenset({"myhost"})) is allowed


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080", True),
        ("https://127.0.0.1:8080", False),
        ("http://evil.example", False),
        ("http://127.0.0.1:8080.evil.example", False),
        ("null", False),
        ("http://127.0.0.1:8080/path", False),
    ],
)
def test_origins(origin: str, allowed: bool) -> None:
    assert origin_allowed(LOCAL, origin) is allowed
