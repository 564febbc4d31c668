"""What a killed command left in a guest (its temporary file, the agent's handle on it) is
removed by the next command that works there, however the records on the host or the guest
itself misbehave: no crash, no hang, a few seconds at most."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CLI, READY, Guest

pytestmark = pytest.mark.vm

RECORDS = Path("vms/gt/guest-temp")
HANDLES = "ls -l /proc/$(cat /run/qemu-ga.pid)/fd"


def started(cli: CLI, guest: Guest) -> Path:
    cli.create_guest("gt", guest)
    cli.ok("start", "gt", "--wait-for", READY, "--wait-for-agent", "--timeout", "120")
    return cli.state_dir / RECORDS


def test_a_killed_copy_leaves_no_file_and_no_open_handle_in_the_guest(
    cli: CLI, guest: Guest, tmp_path: Path
) -> None:
    if shutil.which("strace") is None:
        pytest.skip("needs strace")
    records = started(cli, guest)
    sent = tmp_path / "sent.bin"
    sent.write_bytes(os.urandom(3_000_000))
    # Killed at its third read of the file: two chunks are in the guest's temporary file.
    argv = [
        "strace", "-qq", "-f", "-o", "/dev/null", "-P", str(sent), "-e", "trace=read",
        "-e", "inject=read:signal=SIGKILL:when=3", *cli.command(), "copy", str(sent), "gt:/root/",
    ]  # fmt: skip
    killed = subprocess.run(argv, env=cli.env, capture_output=True, text=True, timeout=120)
    assert killed.returncode != 0 and len(list(records.iterdir())) == 1
    listed = cli.ok("exec", "gt", "--", "ls", "-A", "/root").out.split()  # the next command
    assert not [entry for entry in listed if entry.startswith(".clan-vm-")], listed
    assert "sent.bin" not in listed
    assert "clan-vm" not in cli.ok("exec", "gt", "--", "sh", "-c", HANDLES).out
    assert not list(records.iterdir())
    cli.ok("copy", str(sent), "gt:/root/")  # and the next copy works
    summed = cli.ok("exec", "gt", "--", "sha256sum", "/root/sent.bin").out.split()[0]
    assert summed == hashlib.sha256(sent.read_bytes()).hexdigest()
    cli.ok("stop", "gt", "--force")


def test_records_that_are_not_ours_or_a_guest_that_hangs_cost_seconds_not_more(
    cli: CLI, guest: Guest
) -> None:
    records = started(cli, guest)
    records.mkdir()
    (records / "a-directory").mkdir()
    os.mkfifo(records / "a-fifo")
    (records / "a-link").symlink_to("/dev/zero")
    (records / "huge").write_text("[" + '"/tmp/x", ' * 100_000 + '"/tmp/x"]')
    (records / "relative").write_text('{"dirs": ["root"], "handles": []}')
    began = time.monotonic()
    cli.ok("exec", "gt", "--", "true", timeout=60)
    assert time.monotonic() - began < 20
    assert sorted(p.name for p in records.iterdir()) == ["a-directory"]  # not ours to remove
    (records / "a-directory").rmdir()
    # A guest whose shell never ends: each command gives the leftovers a few seconds, and
    # after three tries a record is dropped.
    shell = cli.ok("exec", "gt", "--", "/bin/busybox", "readlink", "/bin/sh").out.strip()
    hang = "printf '#!/bin/busybox sh\\nexec /bin/busybox sleep 1000\\n' > /bin/hang"
    cli.ok("exec", "gt", "--", "/bin/busybox", "sh", "-c", f"{hang}; chmod +x /bin/hang")
    cli.ok("exec", "gt", "--", "/bin/busybox", "ln", "-sf", "/bin/hang", "/bin/sh")
    for token in ("aaaa1111", "bbbb2222", "cccc3333"):
        (records / token).write_text('{"dirs": ["/root"], "handles": []}')
    for _ in range(3):
        began = time.monotonic()
        cli.ok("exec", "gt", "--", "/bin/busybox", "true", timeout=60)
        assert time.monotonic() - began < 15
    assert not list(records.iterdir())
    cli.ok("exec", "gt", "--", "/bin/busybox", "ln", "-sf", shell, "/bin/sh")
    cli.ok("stop", "gt", "--force")
