"""``list`` over this machine and libvirt hosts: one HOST column, hosts asked in parallel,
and a host that does not answer shown as such, never as stopped VMs and never a hang."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from tests.conftest import Guest
from tests.libvirt import daemons
from tests.libvirt.conftest import LV


def rows(lv: LV, *args: str) -> dict[str, dict[str, object]]:
    return {r["name"]: r for r in json.loads(lv.cli.ok("list", "--json", *args).out)}


def test_list_shows_local_and_hosted_vms_with_their_host(lv: LV, guest: Guest) -> None:
    here, there, other = lv.name("here"), lv.name("there"), lv.name("other")
    second = "b" if lv.hosts.b is not None else "a-ssh"  # no host B in a chroot
    lv.cli.create_guest(here, guest)
    lv.create(there, "a", guest)
    lv.create(other, second, guest)
    listed = rows(lv)
    assert {n: (r["host"], r["state"]) for n, r in listed.items()} == {
        here: (None, "stopped"),
        there: ("a", "stopped"),
        other: (second, "stopped"),
    }
    table = [line.split()[:3] for line in lv.cli.ok("list").out.splitlines()]
    assert table == [
        ["NAME", "HOST", "STATE"],
        [here, "-", "stopped"],
        [other, second, "stopped"],
        [there, "a", "stopped"],
    ]
    assert list(rows(lv, "--host", second)) == [other]
    # A host named by its URI is the same host.
    assert list(rows(lv, "--host", "qemu:///system")) == [there]
    unknown = lv.cli.run("list", "--host", "nowhere")
    assert unknown.code == 2 and "unknown host 'nowhere'" in unknown.err


def _listing_time(lv: LV, *args: str) -> float:
    began = time.monotonic()
    listed = rows(lv, *args)
    assert listed and {r["state"] for r in listed.values()} == {"stopped"}, listed
    return time.monotonic() - began


def test_two_hosts_are_asked_in_parallel(lv: LV, guest: Guest) -> None:
    """Each host answers only after DELAY seconds: listing both takes about as long as
    listing one, not a DELAY longer."""
    delay = 1.5
    for name, base in (("slow-a", lv.host("a-ssh")), ("slow-b", lv.host("b"))):
        port = base.uri.split("@127.0.0.1:", 1)[1].split("/", 1)[0]
        uri, _ = lv.hosts.ssh.uri(name, int(port), delay)
        lv.add(daemons.Host(name, uri, ["virsh", "-q", "-c", uri]))
        lv.create(lv.name(name), name, guest)
    one = min(_listing_time(lv, "--host", "slow-a") for _ in range(2))
    both = min(_listing_time(lv) for _ in range(2))
    assert one >= delay
    assert both < one + delay / 2, f"one slow host: {one:.1f}s, two: {both:.1f}s"


def test_a_host_that_goes_away_mid_list_is_unreachable(lv: LV, guest: Guest) -> None:
    gone = lv.add(daemons.ssh_to_a(lv.hosts.ssh, "going", delay=1.0))
    lost, kept = lv.name("lost"), lv.name("kept")
    lv.create(lost, "going", guest)
    lv.create(kept, "a", guest)
    assert gone.sshd_pidfile is not None
    listing = subprocess.Popen(
        [*lv.cli.command(), "list", "--json"], env=lv.cli.env, stdout=subprocess.PIPE, text=True
    )
    time.sleep(0.5)  # the list is under way, waiting for the host
    daemons.signal_sshd(gone.sshd_pidfile, signal.SIGKILL)  # with the connection kept open
    out, _ = listing.communicate(timeout=60)
    assert listing.returncode == 0
    listed = {r["name"]: r for r in json.loads(out)}
    assert listed[kept]["state"] == "stopped"
    assert listed[lost]["state"] == "unreachable"
    assert "Connection refused" in str(listed[lost]["error"])
    table = lv.cli.ok("list").out
    assert "unreachable: ssh: connect to host 127.0.0.1 port" in table
    status = lv.cli.ok("status", lost)
    assert status.out.startswith(f"{lost}: unreachable: ")
    for args in (("start", lost), ("delete", lost)):
        refused = lv.cli.run(*args)
        assert refused.code == 1 and refused.err.startswith("error: host going is unreachable")
        assert refused.err.count("\n") == 1
    events = json.loads(lv.cli.ok("history", "--vm", lost, "--json").out)
    assert [e["action"] for e in events] == ["create"]


def test_a_frozen_host_is_given_up_in_bounded_time(lv: LV, guest: Guest) -> None:
    frozen = lv.add(daemons.ssh_to_a(lv.hosts.ssh, "frozen"))
    name = lv.name("frozen")
    lv.create(name, "frozen", guest)
    assert frozen.sshd_pidfile is not None
    # Accepts connections, never answers, and the connection kept open since the create
    # goes silent: a hung machine.
    daemons.signal_sshd(frozen.sshd_pidfile, signal.SIGSTOP)
    try:
        began = time.monotonic()
        listed = rows(lv)
        took = time.monotonic() - began
    finally:
        daemons.signal_sshd(frozen.sshd_pidfile, signal.SIGCONT)
        daemons.signal_sshd(frozen.sshd_pidfile, signal.SIGTERM)
    assert listed[name]["state"] == "unreachable", listed[name]
    assert took < 15, f"list took {took:.1f}s"


def test_commands_share_one_connection_to_a_host(lv: LV, guest: Guest) -> None:
    """The first command connects; the next ones, and virsh with the same URI, go through
    that connection (the host's sshd accepts one login) and it stays after they ended."""
    shared = lv.add(daemons.ssh_to_a(lv.hosts.ssh, "shared"))
    name = lv.name("shared")
    lv.create(name, "shared", guest)
    for _ in range(3):
        assert rows(lv, "--host", "shared")[name]["state"] == "stopped"
    assert lv.cli.ok("status", name).out.startswith(f"{name}: stopped")
    assert shared.sshd_pidfile is not None
    log = shared.sshd_pidfile.with_name("sshd_shared.log").read_text()
    assert log.count("Accepted publickey") == 1, log
