"""exec, copy and ssh into a VM on a libvirt host, reached over qemu+ssh:// as a remote host
is: every size goes through libvirt's way to the agent (which once broke commands of more
than about 200 KB into garbage), a failed copy leaves nothing behind, and ssh goes only into
the network the VM is attached to on that host."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.conftest import READY, Guest
from tests.libvirt.conftest import LV
from tests.vmhelpers import PUBLIC_KEY, one_error

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


def test_ssh_goes_only_into_the_network_the_vm_is_attached_to_on_its_host(
    lv: LV, guest: Guest
) -> None:
    """The host's addresses on the VM's tap are read on the host (over the URI's ssh; the
    host is this machine, reached as a remote one): an address the guest's agent reports
    elsewhere is not used."""
    if os.geteuid() != 0:
        pytest.skip("taps need root")
    cli, name = lv.cli, lv.name("tapssh")
    tap, octet = "cvl" + secrets.token_hex(4), str(secrets.randbelow(200) + 20)
    prefix = f"10.204.{octet}"
    subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{prefix}.1/24", "dev", tap], check=True)
        subprocess.run(["ip", "link", "set", tap, "up"], check=True)
        lv.create(name, "a-ssh", guest, "--network", "tap", "--tap", tap)
        cli.ok("start", name, "--wait-for", READY, "--wait-for-agent", "--timeout", "120")
        key = f"mkdir -p /etc/ssh; echo '{PUBLIC_KEY}' > /etc/ssh/ssh_host_ed25519_key.pub"
        key += "; echo root:x:0:0::/root:/bin/sh > /etc/passwd"  # a user to let in, no sshd
        outside = "ip link set eth0 up; ip addr add 192.0.2.9/24 dev eth0"
        cli.ok("exec", name, "--", "sh", "-c", f"{key}; {outside}")
        refused = one_error(cli.run("ssh", name, "--timeout", "5", "--", "true"))
        assert f"no IPv4 address in the network of {tap} on host a-ssh ({prefix}.1/24" in refused
        assert "192.0.2.9" in refused  # what the agent reported, shown
        cli.ok("exec", name, "--", "ip", "addr", "add", f"{prefix}.77/24", "dev", "eth0")
        tried = one_error(cli.run("ssh", name, "--timeout", "5", "--", "true", timeout=90))
        assert f"{prefix}.77" in tried  # went there (no sshd answers in this guest)
        cli.ok("stop", name, "--force")
    finally:
        subprocess.run(["ip", "link", "delete", tap], check=False)
