"""A hostile guest agent (``tests.guests.fake_agent`` on the VM's agent channel) meets every
command that talks to it: malformed replies, endless answers, lying sizes, a host key that
never ends, lying addresses. What a user sees is one ``error:`` line about the guest, exit 1,
bounded time and memory, nothing written anywhere it was not asked for."""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, Guest, kill_leftover_qemu
from tests.guests.fake_agent import (
    FakeAgent,
    Files,
    agent_fifos,
    endless,
    exec_replies,
    taken_over_when_opened,
)
from tests.guests.fake_agent import hostile as fake_on
from tests.vmhelpers import PUBLIC_KEY, one_error, peak

pytestmark = [pytest.mark.vm, pytest.mark.xdist_group("hostile")]
# The guests run their agent, so QEMU sees their agent port open (a guest whose port is closed
# has no agent to ask); the tests' fake agent takes over the channel on the host's side.
APPEND = "console=ttyS0 quiet no_timer_check"
INVALID = "the guest agent of VM '{}' sent an invalid reply"
TAP_NET = "10.203.{}.0/24"


@pytest.fixture(scope="module")
def tap() -> Iterator[tuple[str, str]]:
    """A tap device with a host address of its own: (name, host address)."""
    if os.geteuid() != 0:
        pytest.skip("taps need root")
    name, octet = "cvh" + secrets.token_hex(4), str(secrets.randbelow(200) + 20)
    host = TAP_NET.format(octet).replace(".0/24", ".1")
    subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True)
    subprocess.run(["ip", "addr", "add", f"{host}/24", "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    yield name, host
    subprocess.run(["ip", "link", "delete", name], check=False)


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory, guest: Guest) -> Iterator[CLI]:
    """Running VMs whose agent channels the tests take over: 'evil' (user networking, guest
    port 22 forwarded)."""
    cli = CLI(tmp_path_factory.mktemp("hostile") / "state")
    cli.create_guest("evil", guest, "--forward", "tcp:auto:22", append=APPEND)
    cli.ok("start", "evil")
    try:
        yield cli
    finally:
        kill_leftover_qemu(cli.state_dir)


def hostile(cli: CLI, replies: dict[str, Any], name: str = "evil") -> FakeAgent:
    return fake_on(cli.state_dir, name, replies)


def status_reply(**fields: Any) -> dict[str, Any]:
    return {"exited": True, "exitcode": 0, **fields}


MALFORMED_EXEC: dict[str, dict[str, Any]] = {
    "deep nesting": {"guest-exec": b'{"return": ' + b"[" * 200000 + b"]" * 200000 + b"}"},
    "not an object": {"guest-exec": b"[1, 2, 3]"},
    "not JSON": {"guest-exec": b"\x00\x01 this is not JSON"},
    "1e999": {"guest-exec": b'{"return": {"pid": 1e999}}'},
    "NaN": {"guest-exec": b'{"return": {"pid": NaN}}'},
    "a 5000-digit number": {"guest-exec": b'{"return": {"pid": ' + b"9" * 5000 + b"}}"},
    "pid as text": {"guest-exec": {"pid": "7"}},
    "pid true": {"guest-exec": {"pid": True}},
    "no return": {"guest-exec": b'{"surprise": 1}'},
    "exited as text": exec_replies({"exited": "yes"}),
    "exit code 256": exec_replies(status_reply(exitcode=256)),
    "exit code -1": exec_replies(status_reply(exitcode=-1)),
    "signal 0": exec_replies({"exited": True, "signal": 0}),
    "signal 200": exec_replies({"exited": True, "signal": 200}),
    "no exit code": exec_replies({"exited": True}),
    "bad base64": exec_replies(status_reply(**{"out-data": "!!! not base64 !!!"})),
    "output as a list": exec_replies(status_reply(**{"out-data": ["a"]})),
    "truncated as text": exec_replies(status_reply(**{"out-truncated": "no"})),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_EXEC))
def test_a_malformed_reply_is_one_error_about_the_guest(evil: CLI, case: str) -> None:
    with hostile(evil, MALFORMED_EXEC[case]):
        result = evil.run("exec", "evil", "--timeout", "10", "--", "true", timeout=60)
    assert INVALID.format("evil") in one_error(result)


def test_status_and_start_wait_for_agent_survive_a_malformed_ping(evil: CLI, guest: Guest) -> None:
    bad_ping = {"guest-ping": b'{"return": ' + b"{" * 100000}
    with hostile(evil, bad_ping):
        # Asked now; and an agent that failed is asked again by a plain status, not taken
        # at the word of an earlier answer.
        asked = json.loads(
            evil.ok("status", "evil", "--json", "--wait-agent", "--timeout", "5").out
        )
        status = json.loads(evil.ok("status", "evil", "--json").out)
    assert asked["agent"] is False and asked["state"] == "running"
    assert status["agent"] is False and status["state"] == "running"
    evil.create_guest("evstart", guest, append=APPEND)
    with taken_over_when_opened(evil.state_dir, {"evstart": bad_ping}):
        started = evil.run("start", "evstart", "--wait-for-agent", "--timeout", "60")
    line = one_error(started)
    assert INVALID.format("evstart") in line and "still running" in line
    evil.ok("stop", "evstart", "--force")


def test_a_valid_reply_still_works_and_codes_are_not_wrapped(evil: CLI) -> None:
    out = base64.b64encode(b"from the fake agent\n").decode()
    with hostile(evil, exec_replies(status_reply(exitcode=7, **{"out-data": out}))):
        result = evil.run("exec", "evil", "--", "anything")
    assert (result.code, result.out) == (7, "from the fake agent\n")
    with hostile(evil, exec_replies({"exited": True, "signal": 9})):
        assert evil.run("exec", "evil", "--", "anything").code == 128 + 9


def test_a_vm_whose_agent_is_served_on_a_socket_is_still_reached(evil: CLI) -> None:
    """A VM started by an earlier version serves its agent's port on a socket, not FIFOs
    (and FIFOs left from another run, which no QEMU reads, do not stand in the way)."""
    fifos = agent_fifos(evil.state_dir, "evil")
    socket_path = fifos[0].with_name("agent.sock")
    for fifo in fifos:
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    with FakeAgent(
        exec_replies(status_reply(**{"out-data": base64.b64encode(b"on the socket\n").decode()})),
        socket_path=socket_path,
    ) as agent:
        result = evil.run("exec", "evil", "--", "anything")
    assert (result.code, result.out) == (0, "on the socket\n")
    assert agent.seen[:2] == ["guest-sync-delimited", "guest-exec"]


def test_an_endless_reply_ends_at_the_size_bound_in_bounded_memory(evil: CLI) -> None:
    with hostile(evil, exec_replies(lambda args: endless())):
        began = time.monotonic()
        result, rss = peak(evil, "exec", "evil", "--", "true")
    assert "longer than 48 MiB" in one_error(result)
    assert time.monotonic() - began < 60
    assert rss < 200, f"peak RSS {rss} MiB"


def test_an_error_reply_cannot_paint_the_terminal(evil: CLI) -> None:
    desc = "no\x1b[2J\x1b[31m\nsecond line" + "x" * 5000
    reply = json.dumps({"error": {"class": "GenericError", "desc": desc}}).encode()
    with hostile(evil, {"guest-exec": reply}):
        line = one_error(evil.run("exec", "evil", "--", "true"))
    assert "\x1b" not in line and "\\x1b[2J" in line and len(line) < 400


def test_copy_out_stops_at_the_reported_size_or_the_limit(evil: CLI, tmp_path: Path) -> None:
    target = tmp_path / "got"
    target.write_bytes(b"before")
    lying = Files({"/grows": endless(b"z" * 4096)}, sizes={"/grows": 10})
    with hostile(evil, lying.replies()):
        evil.ok("copy", "evil:/grows", str(target))
    assert target.read_bytes() == b"z" * 10  # what it said it had, not what it sent
    target.write_bytes(b"before")
    cases = [
        ("/dev/zero", Files({"/dev/zero": endless()}), [], "larger than 67108864 bytes"),
        (
            "/big",
            Files({"/big": endless()}, sizes={"/big": 1 << 50}),
            ["--max-size", "10M"],
            "more than --max-size",
        ),
        (
            "/big",
            Files({"/big": endless(b"z")}, sizes={"/big": 1 << 50}),
            ["--timeout", "3"],
            "took longer than --timeout",
        ),
    ]
    for path, files, options, words in cases:
        with hostile(evil, files.replies()):
            result, rss = peak(evil, "copy", f"evil:{path}", str(target), *options)
        assert words in one_error(result), words
        assert rss < 200, f"{words}: peak RSS {rss} MiB"
        assert target.read_bytes() == b"before", words
        assert sorted(p.name for p in tmp_path.iterdir()) == ["got"], words


def test_a_host_key_that_never_ends_or_is_no_key_is_refused(evil: CLI) -> None:
    replies = {**exec_replies(status_reply())}
    for content, words in (
        (endless(), "larger than 8192 bytes"),
        (b"ssh-ed25519 AAAAnotakey\n", "not valid base64"),
        (b"-oProxyCommand=x AAAA\n", "not a public key of a known type"),
        (b"ssh-rsa " + PUBLIC_KEY.split()[1].encode() + b"\n", "does not match its type"),
    ):
        files = Files({"/etc/ssh/ssh_host_ed25519_key.pub": content})
        with hostile(evil, {**replies, **files.replies()}):
            result, rss = peak(evil, "ssh", "evil", "--timeout", "5", "--", "true")
        assert "has no usable SSH host key" in one_error(result) and words in result.err
        assert rss < 200
        assert not (evil.state_dir / "vms" / "evil" / "ssh" / "known_hosts").exists()


def test_ssh_goes_only_to_an_address_in_the_vms_network(
    tmp_path: Path, guest: Guest, tap: tuple[str, str]
) -> None:
    ifname, host = tap
    prefix = host.rsplit(".", 1)[0]
    cli = CLI(tmp_path / "state")
    cli.create_guest("evtap", guest, "--network", "tap", "--tap", ifname, append=APPEND)
    # Its agent's port open before the fake agent takes the socket (a loaded machine boots
    # the guest slower than the 5 s the ssh below waits).
    cli.ok("start", "evtap", "--wait-for-agent", "--timeout", "120")
    marker = tmp_path / "pwned"
    lies = [
        f"-oProxyCommand=touch {marker}",
        "$(touch " + str(marker) + ")",
        host,  # the host's own address on the tap
        f"{prefix}.255",  # the network's broadcast address
        "8.8.8.8",  # outside the network
        "127.0.0.1",
    ]

    def interfaces(addresses: list[str]) -> list[dict[str, Any]]:
        listed = [{"ip-address-type": "ipv4", "ip-address": a, "prefix": 24} for a in addresses]
        return [{"name": "eth0", "ip-addresses": listed}]

    files = Files({"/etc/ssh/ssh_host_ed25519_key.pub": PUBLIC_KEY.encode()})
    replies = {**exec_replies(status_reply()), **files.replies()}
    try:
        with hostile(cli, {**replies, "guest-network-get-interfaces": interfaces(lies)}, "evtap"):
            refused = cli.run("ssh", "evtap", "--timeout", "5", "--", "true")
        line = one_error(refused)
        assert "reports no IPv4 address in the network of" in line and f"{host}/24" in line
        valid = f"{prefix}.77"
        with hostile(
            cli, {**replies, "guest-network-get-interfaces": interfaces([*lies, valid])}, "evtap"
        ):
            tried = cli.run("ssh", "evtap", "--timeout", "4", "--", "true", timeout=90)
        assert valid in one_error(tried)  # it tried that address (nothing answers there)
        assert not marker.exists()
    finally:
        kill_leftover_qemu(cli.state_dir)


def evil_archive(entries: list[tuple[str, bytes | None, str | None, bytes]]) -> bytes:
    """A tar of (name, content or None, link target or None, type), as a hostile guest's
    ``tar`` could hand over."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, content, link, kind in entries:
            member = tarfile.TarInfo(name)
            member.type = kind
            member.mode = 0o4755 if name.endswith("setuid") else 0o644
            if link is not None:
                member.linkname = link
            member.size = len(content or b"")
            tar.addfile(member, io.BytesIO(content or b""))
    return out.getvalue()


def packed(archive: bytes) -> dict[str, Any]:
    """A guest whose ``tar`` hands over ARCHIVE (its path printed, then read through the
    agent)."""
    printed = base64.b64encode(b"/tmp/archive.tar\n").decode()
    files = Files({"/tmp/archive.tar": archive})
    return {**exec_replies(status_reply(**{"out-data": printed})), **files.replies()}


def test_a_hostile_archive_cannot_write_outside_the_tree(evil: CLI, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    cases = {
        "could not be unpacked here: [Errno 20] Not a directory: 'esc'": [
            ("esc", None, str(outside), tarfile.SYMTYPE),  # a link it made, then through it
            ("esc/pwned", b"x", None, tarfile.REGTYPE),
        ],
        "names '../pwned', outside the tree": [("../pwned", b"x", None, tarfile.REGTYPE)],
        f"names '{outside}/pwned', outside the tree": [
            (f"{outside}/pwned", b"x", None, tarfile.REGTYPE)
        ],
        "names '../../../../etc/passwd', outside the tree": [
            ("pwned", None, "../../../../etc/passwd", tarfile.LNKTYPE)
        ],
        "names 'twice' twice": [
            ("twice", b"x", None, tarfile.REGTYPE),
            ("twice", b"y", None, tarfile.REGTYPE),
        ],
        "sent an invalid archive of '/src'": b"\x00garbage" * 100,
    }
    for words, entries in cases.items():
        archive = entries if isinstance(entries, bytes) else evil_archive(entries)
        with hostile(evil, packed(archive)):
            result = evil.run("copy", "-r", "evil:/src", str(tmp_path / "dest"))
        assert words in one_error(result)
        assert not (tmp_path / "dest").exists(), words
        assert os.listdir(outside) == [], words
        assert sorted(os.listdir(tmp_path)) == ["outside"], words
    # What may come out comes out defanged: no setuid bit, no device.
    allowed = [
        ("setuid", b"#!/bin/sh\n", None, tarfile.REGTYPE),
        ("null", None, None, tarfile.CHRTYPE),
    ]
    with hostile(evil, packed(evil_archive(allowed))):
        result = evil.ok("copy", "-r", "evil:/src", str(tmp_path / "dest"))
    assert "null is a device: not copied" in result.err
    assert stat.S_IMODE((tmp_path / "dest" / "setuid").stat().st_mode) == 0o755
    assert os.listdir(tmp_path / "dest") == ["setuid"]
