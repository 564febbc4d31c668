"""What ssh takes from a guest or the command line, checked (pure functions), and the ssh
command line the tool builds (golden)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from clan_vm_tasks.backends import netinfo
from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.vm import ssh, ssh_checks
from tests.vmhelpers import PUBLIC_KEY


def test_a_host_key_must_be_a_small_public_key_of_a_known_type() -> None:
    kind, blob = PUBLIC_KEY.split()
    assert ssh_checks.host_key(f"{PUBLIC_KEY} root@guest\n".encode()) == (kind, blob)
    assert ssh_checks.host_key(b"\0" * 9000) == "larger than 8192 bytes"
    assert ssh_checks.host_key(b"\xff\xfe") == "not ASCII text"
    assert "known type" in str(ssh_checks.host_key(b"-oProxyCommand=x AAAA"))
    assert ssh_checks.host_key(b"ssh-ed25519 !!!") == "its key is not valid base64"
    assert ssh_checks.host_key(b"ssh-ed25519 AAAA") == "its key is not an SSH public key"
    assert ssh_checks.host_key(f"ssh-rsa {blob}".encode()) == "its key does not match its type"


def test_only_a_user_name_can_become_the_user_of_user_at_host() -> None:
    assert ssh_checks.check_user("root") == "root"
    assert ssh_checks.check_user("deploy.bot-1") == "deploy.bot-1"
    for bad in ("-oProxyCommand=x", "a b", "", "root@evil", "x" * 40, "a;b"):
        with pytest.raises(InvalidInput):
            ssh_checks.check_user(bad)


def test_an_address_is_used_only_inside_the_vms_network() -> None:
    bridge = [(ipaddress.ip_interface("10.9.0.1/24"), None)]
    tap = [(ipaddress.ip_interface("192.168.50.1/32"), ipaddress.ip_address("192.168.50.2"))]

    def usable(text: str, networks: list) -> bool:  # type: ignore[type-arg]
        address = ssh_checks.parse_address(text)
        return address is not None and ssh_checks.usable(address, networks)

    assert usable("10.9.0.7", bridge)
    for lie in ("10.9.0.1", "10.9.0.0", "10.9.0.255", "10.9.1.7", "127.0.0.1", "-oX=y", "a b"):
        assert not usable(lie, bridge), lie
    assert usable("192.168.50.2", tap) and not usable("192.168.50.3", tap)
    # What ip -j addr prints, on this machine or a host: addresses with prefix and peer.
    printed = (
        '[{"ifname": "t0", "addr_info": [{"local": "192.168.50.1", "address": "192.168.50.2",'
        ' "prefixlen": 32}, {"local": "fe80::1", "prefixlen": 64}, {"local": "junk"}]}]'
    )
    assert netinfo.parse(printed) == [
        *tap, (ipaddress.ip_interface("fe80::1/64"), None)
    ]  # fmt: skip
    for odd in ("not json", '{"a": 1}', '[{"addr_info": 5}]', '[{"addr_info": [5, "x"]}]'):
        assert netinfo.parse(odd) == [], odd
    everything = '[{"addr_info": [{"local": "10.0.0.1", "prefixlen": 0}]}]'
    assert netinfo.parse(everything) == []


def test_the_ssh_command_line_never_prompts_and_reads_no_user_configuration() -> None:
    argv = ssh._argv(
        "/usr/bin/ssh", "web", Path("/s/id_ed25519"), Path("/s/known_hosts"), "10.9.0.7", 22
    )
    assert argv == [
        "/usr/bin/ssh", "-F", "/dev/null", "-p", "22",
        "-o", "IdentitiesOnly=yes", "-o", "IdentityFile=/s/id_ed25519",
        "-o", "UserKnownHostsFile=/s/known_hosts", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=clan-vm-web",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
    ]  # fmt: skip
