"""Disks: growing a stopped VM's disk, and copy-on-write overlays over a read-only base."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CLI, READY, Guest
from tests.vmhelpers import disk_of, guest_run, history_actions

MIB = 1 << 20


def shown_disk(cli: CLI, name: str) -> dict[str, object]:
    disks = json.loads(cli.ok("show", name, "--json").out)["disks"]
    assert len(disks) == 1
    disk: dict[str, object] = disks[0]
    return disk


def test_resize_grows_a_stopped_disk_and_refuses_to_shrink(cli: CLI, guest: Guest) -> None:
    cli.create_guest("grow", guest)
    assert "from 64 MiB to 96 MiB" in cli.ok("resize", "grow", "--disk", "96").out
    assert shown_disk(cli, "grow")["virtual_size"] == 96
    assert json.loads(cli.ok("show", "grow", "--json").out)["config"]["disk_size"] == 96

    shrink = cli.run("resize", "grow", "--disk", "32")
    assert shrink.code == 2 and "refusing to shrink" in shrink.err
    assert "Traceback" not in shrink.err
    assert shown_disk(cli, "grow")["virtual_size"] == 96
    for bad in (("resize", "grow"), ("resize", "grow", "--disk", "lots")):
        assert cli.run(*bad).code == 2
    assert history_actions(cli, "grow")[0] == "resize"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.vm
def test_overlay_on_a_read_only_base(cli: CLI, guest: Guest, tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    # Real data in the base, so copying it would be measurable.
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 48M", str(base)],
        check=True,
        capture_output=True,
    )
    digest, mtime = sha256(base), base.stat().st_mtime_ns

    began = time.monotonic()
    cli.create_guest("cow", guest, "--from-image", str(base))
    assert time.monotonic() - began < 5
    overlay = disk_of(cli, "cow")
    assert overlay.stat().st_blocks * 512 < 2 * MIB, "the base was copied"
    disk = shown_disk(cli, "cow")
    assert disk["backing_file"] == str(base) and disk["format"] == "qcow2"
    assert disk["virtual_size"] == 64 and disk["backing_format"] == "qcow2"
    assert f"backing file {base}" in cli.ok("show", "cow").out

    too_small = cli.run("create", "tiny", "--from-image", str(base), "--disk", "32")
    assert too_small.code == 2 and "smaller than the base image" in too_small.err
    assert cli.run("create", "nobase", "--from-image", str(tmp_path / "nope")).code == 2

    # The guest reads the base through the overlay and writes only to the overlay.
    cli.ok("start", "cow", "--wait-for", READY, "--timeout", "120")
    seen = guest_run(
        cli,
        "cow",
        "dd if=/dev/vda bs=4 count=1 2>/dev/null | od -A n -t x1; "
        "echo overlay-data | dd of=/dev/vda conv=fsync 2>/dev/null; echo wrote-$((40+2))",
        "wrote-42",
    )
    assert "ab ab ab ab" in seen
    cli.ok("snapshot", "cow", "live")
    cli.ok("stop", "cow", "--force")
    cli.ok("resize", "cow", "--disk", "96")
    cli.ok("snapshot", "cow", "cold")
    assert sha256(base) == digest and base.stat().st_mtime_ns == mtime

    cli.ok("delete", "cow")  # keeps the overlay
    # Without --disk an overlay is as large as its base.
    cli.ok("create", "cow2", "--from-image", str(base))
    assert shown_disk(cli, "cow2")["virtual_size"] == 64
    cli.ok("delete", "cow2", "--force")
    assert base.is_file() and sha256(base) == digest and base.stat().st_mtime_ns == mtime
