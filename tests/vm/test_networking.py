"""Networking on real QEMU and real Linux bridges: bridge, tap, user-mode forwards, MACs."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clan_vm_tasks.names import mac_for
from tests.conftest import CLI, READY, Guest
from tests.vmhelpers import guest_run, status, wait_console

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="bridges and taps need root")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


@pytest.fixture
def bridge_name() -> Iterator[str]:
    """A unique bridge name (tests run in parallel); whatever carries it is removed after."""
    name = "cvt" + secrets.token_hex(4)
    yield name
    if link_exists(name):
        ip("link", "delete", name)


def mac(cli: CLI, name: str) -> str:
    result: str = json.loads(cli.ok("show", name, "--json").out)["mac"]
    return result


def test_macs_are_derived_stable_and_never_shared(cli: CLI, guest: Guest) -> None:
    cli.create_guest("m1", guest)
    first = mac(cli, "m1")
    assert first == mac_for("m1") and int(first[:2], 16) & 0b11 == 0b10
    cli.ok("delete", "m1", "--force")
    cli.create_guest("m1", guest)
    assert mac(cli, "m1") == first  # stable across re-creation

    taken = cli.run("create", "m2", "--mac", first)
    assert taken.code == 2 and "already used by VM 'm1'" in taken.err
    assert cli.run("status", "m2").code == 2  # nothing was created

    # A VM whose chosen MAC is what another name would derive blocks that name.
    cli.ok("create", "m3", "--mac", mac_for("m4"))
    clash = cli.run("create", "m4")
    assert clash.code == 1 and "collides with VM 'm3'" in clash.err and "--mac" in clash.err
    cli.ok("create", "m4", "--mac", "02:00:00:00:00:42")


def test_network_options_are_checked(cli: CLI) -> None:
    for args, words in (
        (("--network", "tap"), "needs a tap device"),
        (("--tap", "tap0"), "needs network mode tap"),
        (("--network", "bridge", "--forward", "tcp:1:2"), "need user-mode networking"),
        (("--forward", "tcp:any:22"), "HOSTPORT may be auto"),
        (("--network", "bridge", "--bridge", "not a name"), "not a network interface name"),
    ):
        result = cli.run("create", "bad", *args)
        assert result.code == 2 and words in result.err, result.err
    cli.ok("create", "lonely", "--network", "tap", "--tap", "cvtmissing0")
    missing = cli.run("start", "lonely")
    assert missing.code == 1 and "tap device cvtmissing0 does not exist" in missing.err
    assert status(cli, "lonely")["state"] == "stopped"


@needs_root
@pytest.mark.vm
def test_two_vms_on_one_bridge_reach_each_other(cli: CLI, guest: Guest, bridge_name: str) -> None:
    # VM "br-a" makes its own tap and the bridge (missing, so created); VM "br-b" uses a
    # tap made beforehand, joined to the same bridge.
    tap = bridge_name.replace("cvt", "cvu")
    cli.create_guest("br-a", guest, "--network", "bridge", "--bridge", bridge_name)
    cli.create_guest("br-b", guest, "--network", "tap", "--tap", tap)
    assert not link_exists(bridge_name)
    cli.ok("start", "br-a", "--wait-for", READY, "--timeout", "120")
    assert os.path.isdir(f"/sys/class/net/{bridge_name}/bridge"), "the bridge was not created"
    ip("tuntap", "add", "dev", tap, "mode", "tap")
    try:
        ip("link", "set", tap, "master", bridge_name)
        ip("link", "set", tap, "up")
        cli.ok("start", "br-b", "--wait-for", READY, "--timeout", "120")
        ports = set(os.listdir(f"/sys/class/net/{bridge_name}/brif"))
        assert tap in ports and len(ports) == 2
        own_tap = next(p for p in ports if p != tap)

        guest_run(cli, "br-a", "ip addr add 10.213.7.1/24 dev eth0; ip link set eth0 up; "
                  "echo up-$((1+1))", "up-2")  # fmt: skip
        seen = guest_run(
            cli,
            "br-b",
            "ip addr add 10.213.7.2/24 dev eth0; ip link set eth0 up; "
            "ping -c 2 -W 5 10.213.7.1; echo ping-done-$((6*7))-rc$?",
            "ping-done-42",
        )
        assert "ping-done-42-rc0" in seen and "2 packets received" in seen, seen
        cli.ok("stop", "br-a", "--force")
        assert not link_exists(own_tap), "the tap made for br-a outlived it"
        cli.ok("stop", "br-b", "--force")
        assert link_exists(tap), "a tap we did not make was removed"
    finally:
        if link_exists(tap):
            ip("link", "delete", tap)


def forwarded_port(cli: CLI, name: str, guest_port: int, protocol: str = "tcp") -> int:
    for forward in status(cli, name)["forwards"]:
        head, target = forward.split("->")
        if target == str(guest_port) and head.startswith(f"{protocol}:"):
            return int(head.rsplit(":", 1)[1])
    raise AssertionError(f"no forward to {guest_port} in {status(cli, name)['forwards']}")


@pytest.mark.vm
def test_auto_ports_are_distinct_and_reach_the_guest(cli: CLI, guest: Guest) -> None:
    names = ["fw-a", "fw-b", "fw-c"]
    for name in names:
        cli.create_guest(name, guest, "--forward", "tcp:auto:8080", "--forward", "udp:auto:53")
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda n: cli.ok("start", n), names))
    ports = [forwarded_port(cli, n, 8080) for n in names]
    assert len(set(ports)) == len(ports), f"auto ports collided: {ports}"
    shown = json.loads(cli.ok("show", "fw-a", "--json").out)["forwards"]
    assert f"tcp:127.0.0.1:{ports[0]}->8080" in shown
    for port in ports:  # QEMU listens on each, on loopback only
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    for name in names[1:]:
        cli.ok("stop", name, "--force")

    wait_console(cli, "fw-a", READY, timeout=120)
    guest_run(
        cli,
        "fw-a",
        "ip addr add 10.0.2.15/24 dev eth0; ip link set eth0 up; mkdir -p /www; "
        "echo served-by-$(hostname) > /www/index.html; httpd -p 8080 -h /www; echo httpd-$((6*7))",
        "httpd-42",
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/", timeout=20) as response:
        assert response.read().decode().strip() == "served-by-fw-a"

    # UDP: nothing listens on guest port 53, so each datagram that arrives is counted by
    # the guest kernel as "NoPorts" in /proc/net/snmp.
    def udp_no_ports(marker: str) -> int:
        out = guest_run(cli, "fw-a", f"echo {marker} $(grep Udp: /proc/net/snmp | tail -1)", marker)
        fields = out.split(marker, 2)[2].split()  # the echo of the command line comes first
        return int(fields[2])  # "Udp:" InDatagrams NoPorts ...

    before = udp_no_ports("udp-before")
    udp_port = forwarded_port(cli, "fw-a", 53, "udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(3):
            sender.sendto(b"ping", ("127.0.0.1", udp_port))
    assert udp_no_ports("udp-after") >= before + 3
    cli.ok("stop", "fw-a", "--force")
    assert status(cli, "fw-a")["forwards"] == [
        "tcp:127.0.0.1:auto->8080",
        "udp:127.0.0.1:auto->53",
    ]


@pytest.mark.vm
def test_auto_ports_stay_the_same_across_restarts_while_they_are_free(
    cli: CLI, guest: Guest, clan_dir_for_ports: Path
) -> None:
    clan = str(clan_dir_for_ports)
    cli.create_guest("steady", guest, "--forward", "tcp:auto:22", "--clan-dir", clan)
    cli.ok("start", "steady", "--clan-dir", clan)
    first = forwarded_port(cli, "steady", 22)
    cli.ok("stop", "steady", "--force")
    cli.ok("start", "steady", "--clan-dir", clan)
    assert forwarded_port(cli, "steady", 22) == first
    inventory = json.loads((clan_dir_for_ports / "inventory.json").read_text())
    assert inventory["machines"]["steady"]["deploy"]["targetHost"] == f"root@127.0.0.1:{first}"
    cli.ok("stop", "steady", "--force")
    with socket.socket() as squatter:  # someone else took the port meanwhile
        squatter.bind(("127.0.0.1", first))
        squatter.listen()
        cli.ok("start", "steady")
        assert forwarded_port(cli, "steady", 22) != first
    cli.ok("stop", "steady", "--force")


@pytest.fixture
def clan_dir_for_ports(tmp_path: Path) -> Path:
    directory = tmp_path / "clan"
    directory.mkdir()
    (directory / "inventory.json").write_text('{"machines": {}}\n')
    return directory
