"""A real distribution guest: Debian 12 with systemd, qemu-guest-agent and sshd, booted once
for this module (its image is built once and cached under .cache/debian).

What a user of such a guest relies on: systemd reaches multi-user, `stop` is graceful through
systemd's power-button handling, `exec`, `copy` and `ssh` work against the real agent and
sshd, and a live snapshot taken and reverted is seen from inside the guest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clan_vm_tasks.state.store import VMPaths
from tests.conftest import CLI, kill_leftover_qemu
from tests.guests.debian import DebianImage, ensure_image

MULTI_USER = "- Multi-User System."  # systemd colours the unit name before it
pytestmark = [pytest.mark.vm, pytest.mark.xdist_group("debian")]


@pytest.fixture(scope="module")
def image() -> DebianImage:
    return ensure_image()


def boot(cli: CLI) -> str:
    """Start the Debian VM and wait until systemd reached multi-user and its sshd answers
    (through its agent, which put the VM's key in place); what start said."""
    argv = ["start", "deb", "--wait-for", MULTI_USER, "--wait-for-ssh", "--timeout", "240"]
    return cli.ok(*argv, timeout=300).out


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory, image: DebianImage) -> Iterator[CLI]:
    """One Debian VM for the module, booted to multi-user with its agent answering."""
    cli = CLI(tmp_path_factory.mktemp("debian") / "state")
    cli.ok(
        "create", "deb",
        "--from-image", str(image.disk),
        "--kernel", str(image.kernel),
        "--initrd", str(image.initrd),
        "--append", image.append,
        "--cpus", "2", "--memory", "512",
        "--forward", "tcp:auto:22",
    )  # fmt: skip
    try:
        assert "its SSH server answered" in boot(cli)
        yield cli
    finally:
        kill_leftover_qemu(cli.state_dir)


def test_exec_relays_output_and_exit_code(deb: CLI) -> None:
    result = deb.run(
        "exec", "deb", "--", "sh", "-c", "cat /etc/debian_version; echo oops >&2; exit 3"
    )
    assert result.code == 3
    assert re.match(r"12\.\d+", result.out) and result.err.strip() == "oops"
    running = deb.ok("exec", "deb", "--", "systemctl", "is-system-running").out.strip()
    assert running in ("running", "degraded"), running
    status = json.loads(deb.ok("status", "deb", "--json").out)
    assert status["agent"] is True and status["state"] == "running"
    hung = deb.run("exec", "deb", "--timeout", "2", "--", "sleep", "30")
    assert hung.code == 1 and "did not finish within 2s" in hung.err


def test_copy_is_byte_exact_both_ways(deb: CLI, tmp_path: Path) -> None:
    data = os.urandom(6 << 20)
    source = tmp_path / "payload.bin"
    source.write_bytes(data)
    source.chmod(0o640)
    deb.ok("copy", str(source), "deb:/root/payload.bin")
    digest = deb.ok("exec", "deb", "--", "sha256sum", "/root/payload.bin").out.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    assert deb.ok("exec", "deb", "--", "stat", "-c", "%a", "/root/payload.bin").out.strip() == "640"
    deb.ok("copy", "deb:/root/payload.bin", str(tmp_path))
    assert (tmp_path / "payload.bin").read_bytes() == data
    both = deb.run("copy", "deb:/a", "deb:/b")
    assert both.code == 2 and "exactly one side" in both.err


def test_trees_and_stdin_with_gnu_tar_and_coreutils(deb: CLI, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_text("content\n")
    (tree / "sub" / "file").chmod(0o640)
    (tree / "link").symlink_to("/etc/shadow")
    deb.ok("copy", "-r", str(tree), "deb:/root/")
    shown = deb.ok(
        "exec", "deb", "--", "stat", "-c", "%A %N", "/root/tree/sub/file", "/root/tree/link"
    )
    assert shown.out.splitlines() == [
        "-rw-r----- '/root/tree/sub/file'",
        "lrwxrwxrwx '/root/tree/link' -> '/etc/shadow'",
    ]
    deb.ok("copy", "-r", "deb:/root/tree", str(tmp_path / "back"))
    assert (tmp_path / "back" / "sub" / "file").read_text() == "content\n"
    assert os.readlink(tmp_path / "back" / "link") == "/etc/shadow"
    assert deb.ok("exec", "deb", "--", "wc", "-l", stdin="a\nb\n").out.strip() == "2"


def test_ssh_reuses_one_connection_and_is_quick(deb: CLI) -> None:
    """start --wait-for-ssh opened the connection; every ssh goes through it without asking
    the agent anything."""
    times = []
    for _ in range(3):
        began = time.monotonic()
        deb.ok("ssh", "deb", "--", "true")
        times.append(time.monotonic() - began)
    print(f"ssh deb -- true: {', '.join(f'{t:.2f}s' for t in times)}")
    assert max(times) < 1.0, times
    # Its socket is in the VM's short runtime directory (unix socket paths: 108 bytes, and
    # ssh adds 17 characters while it makes one).
    run = VMPaths(deb.state_dir / "vms" / "deb").run
    masters = [p for p in run.glob("ssh-*") if p.is_socket()]
    assert len(masters) == 1 and len(str(masters[0])) + 17 < 108


def test_ssh_with_the_vms_own_key_and_a_pinned_host_key(deb: CLI) -> None:
    result = deb.ok("ssh", "deb", "--", "cat", "/etc/hostname")
    assert result.out.strip() == "debian"
    state = deb.state_dir / "vms" / "deb" / "ssh"
    assert (state / "id_ed25519").exists() and (state / "known_hosts").read_text().startswith(
        "clan-vm-deb ssh-ed25519 "
    )
    keys = deb.ok("exec", "deb", "--", "cat", "/root/.ssh/authorized_keys").out
    assert keys.count("clan-vm-deb") == 1
    deb.ok("ssh", "deb", "--", "true")  # a second time: the key is not added again
    assert deb.ok("exec", "deb", "--", "cat", "/root/.ssh/authorized_keys").out == keys
    # A changed host key is refused.
    pinned = (state / "known_hosts").read_text()
    other = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(state.parent / "other")],
        check=True,
    )
    assert other.returncode == 0
    fake = (state.parent / "other.pub").read_text().split()[1]
    (state / "known_hosts").write_text(f"clan-vm-deb ssh-ed25519 {fake}\n")
    refused = deb.run("ssh", "deb", "--", "true")
    assert refused.code == 255 and "Host key verification failed" in refused.err
    (state / "known_hosts").write_text(pinned)


def test_a_live_snapshot_round_trip_is_seen_inside_the_guest(deb: CLI) -> None:
    deb.ok("exec", "deb", "--", "sh", "-c", "echo before > /root/marker; sync")
    deb.ok("snapshot", "deb", "checkpoint")
    deb.ok("exec", "deb", "--", "sh", "-c", "echo after > /root/marker; sync")
    assert deb.ok("exec", "deb", "--", "cat", "/root/marker").out.strip() == "after"
    deb.ok("revert", "deb", "checkpoint")
    assert deb.ok("exec", "deb", "--", "cat", "/root/marker").out.strip() == "before"
    deb.ok("snapshot", "deb", "checkpoint", "--delete")


def test_zz_a_graceful_stop_and_a_restart_on_another_port_keep_ssh_trusted(deb: CLI) -> None:
    stopped = deb.ok("stop", "deb", "--timeout", "90")
    assert "(acpi)" in stopped.out
    events = json.loads(deb.ok("history", "--vm", "deb", "--json").out)
    assert events[0]["action"] == "stop" and events[0]["details"].startswith("acpi")
    previous = json.loads((deb.state_dir / "vms" / "deb" / "state.json").read_text())["forwards"]
    port = int(previous[0].split(":")[2].split("->")[0])
    with socket.socket() as squatter:  # the old port is taken: the VM gets another one
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        deb.ok("start", "deb")  # returns while the guest boots: ssh waits for its sshd
        began = time.monotonic()
        hostname = deb.ok("ssh", "deb", "--timeout", "240", "--", "cat", "/etc/hostname").out
        print(f"ssh right after a plain start answered after {time.monotonic() - began:.1f}s")
        assert hostname.strip() == "debian"
        now = json.loads(deb.ok("status", "deb", "--json").out)["forwards"][0]
        assert f":{port}->" not in now
