"""exec and copy into a VM on a libvirt host, reached over qemu+ssh:// as a remote host is:
every size goes through libvirt's way to the agent (which once broke commands of more than
about 200 KB into garbage), and a failed copy leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import READY, Guest
from tests.libvirt.conftest import LV
from tests.vmhelpers import one_error

pytestmark = pytest.mark.vm


def test_copy_and_exec_of_any_size_through_libvirt(lv: LV, guest: Guest, tmp_path: Path) -> None:
    cli, name = lv.cli, lv.name("access")
    lv.create(name, "a-ssh", guest)
    cli.ok("start", name, "--wait-for", READY, "--wait-for-agent", "--timeout", "120")
    for size in (1_000_000, 3_000_001):
        data = os.urandom(size)
        source = tmp_path / f"in-{size}"
        source.write_bytes(data)
        cli.ok("copy", str(source), f"{name}:/root/", timeout=300)
        digest = cli.ok("exec", name, "--", "sha256sum", f"/root/in-{size}").out.split()[0]
        assert digest == hashlib.sha256(data).hexdigest()
        cli.ok("copy", f"{name}:/root/in-{size}", str(tmp_path / f"out-{size}"), timeout=300)
        assert (tmp_path / f"out-{size}").read_bytes() == data
    # Standard input larger than one command may carry: written in chunks first.
    counted = cli.ok("exec", name, "--", "wc", "-c", stdin="x" * 700_000)
    assert counted.out.split()[0] == "700000"
    # A copy that fails half-way (the guest's disk fills) leaves the destination as it was.
    cli.ok(
        "exec", name, "--", "sh", "-c", "mkdir -p /mnt/s && mount -t tmpfs -o size=512k t /mnt/s"
    )
    cli.ok("exec", name, "--", "sh", "-c", "echo old > /mnt/s/dest")
    failed = cli.run("copy", str(tmp_path / "in-1000000"), f"{name}:/mnt/s/dest")
    assert "No space left on device" in one_error(failed)
    left = cli.ok("exec", name, "--", "sh", "-c", "cat /mnt/s/dest; ls -A /mnt/s").out
    assert left == "old\ndest\n"
    cli.ok("stop", name, "--force")
