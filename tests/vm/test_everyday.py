"""Small things a user notices: a port another VM holds is named, the history of an unknown VM
is an error, sizes in one unit, auto ports from the documented range, a demo whose commands
can be pasted."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from clan_vm_tasks.backends.ports import AUTO_PORTS
from tests.conftest import CLI, READY, ROOT, Guest
from tests.vmhelpers import status


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.vm
def test_a_fixed_port_another_vm_forwards_names_that_vm(cli: CLI, guest: Guest) -> None:
    port = free_port()
    cli.boot("holder", guest, "--forward", f"tcp:{port}:22")
    cli.create_guest("wants", guest, "--forward", f"tcp:{port}:22", "--forward", "tcp:auto:80")
    refused = cli.run("start", "wants")
    assert refused.code == 1, refused
    assert refused.err == (
        f"error: host port tcp:{port} of VM 'wants' is forwarded by VM 'holder', which is "
        f"running: stop it (clan-vm-manager stop holder) or give 'wants' another port "
        f"(clan-vm-manager set wants --no-forward tcp:{port} --forward tcp:auto:22)\n"
    )
    assert status(cli, "wants")["state"] == "stopped"
    # The way out it names works.
    cli.ok("set", "wants", "--no-forward", f"tcp:{port}", "--forward", "tcp:auto:22")
    cli.ok("start", "wants", "--wait-for", READY, "--timeout", "120")
    ports = [int(f.split("->")[0].rsplit(":", 1)[1]) for f in status(cli, "wants")["forwards"]]
    low, high = AUTO_PORTS
    assert all(low <= p <= high for p in ports), ports  # auto ports, from the range
    for name in ("holder", "wants"):
        cli.ok("stop", name, "--force")


def test_the_auto_port_range_is_the_documented_one() -> None:
    low, high = AUTO_PORTS
    readme = (ROOT / "README.md").read_text()
    networking = readme[readme.index("- **Networking.**") :].split("\n- **", 1)[0]
    assert f"random free one in\n  **{low}-{high}**" in networking
    libvirt = readme[readme.index("## Libvirt hosts") :]
    assert f"a random free one in {low}-{high}, as on\n  this machine" in libvirt


def test_history_of_a_vm_that_never_was_is_an_error(cli: CLI) -> None:
    cli.ok("create", "was", "--disk", "16")
    missing = cli.run("history", "--vm", "nosuch")
    assert missing.code == 2 and missing.err == (
        "error: no VM named 'nosuch' (see: clan-vm-manager list)\n"
    )
    cli.ok("delete", "was", "--force")  # a deleted VM still has its history
    events = json.loads(cli.ok("history", "--vm", "was", "--json").out)
    assert [e["action"] for e in events] == ["delete", "create"]


def test_show_and_status_give_every_size_in_mib(cli: CLI, guest: Guest) -> None:
    cli.create_guest("sizes", guest)
    cli.ok("resize", "sizes", "--disk", "96")
    info = status(cli, "sizes")
    shown = json.loads(cli.ok("show", "sizes", "--json").out)
    [disk] = shown["disks"]
    assert info["disk_size"] == shown["disk_size"] == disk["virtual_size"] == 96
    assert info["memory"] == shown["memory"] == shown["config"]["memory"] == 192
    assert 0 < disk["actual_size"] < 96  # the image takes little of it (metadata only)
    assert "(qcow2, 96 MiB)" in cli.ok("show", "sizes").out


def paste(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """LINE typed into a fresh, non-login bash: nothing of ours in its environment."""
    return subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", line],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.vm
def test_the_demo_prints_commands_that_can_be_pasted(tmp_path: Path, guest: Guest) -> None:
    state = tmp_path / "demo-state"
    fresh = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    env = {**fresh, "CLAN_VM_STATE_DIR": str(state), "CLAN_VM_TEST_GUEST": str(guest.kernel.parent)}
    demo = paste(str(ROOT / "scripts" / "demo"), tmp_path, env)
    try:
        assert demo.returncode == 0, demo.stderr[-2000:]
        printed = [line[2:] for line in demo.stdout.splitlines() if line.startswith("$ ")]
        assert printed[0].startswith("export PATH=")
        assert any("--append 'console=ttyS0 quiet no_timer_check'" in c for c in printed)
        assert any(f"--wait-for '{READY}'" in c for c in printed)
        # Pasted in order into a shell of their own, after the VM is gone, they work again.
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "clan-vm-manager"), "delete", "example", "--force"],
            env=env,
            check=True,
            capture_output=True,
        )
        replay = paste("set -e\n" + "\n".join(printed), tmp_path, fresh)
        assert replay.returncode == 0, replay.stderr[-2000:]
        assert "stopped VM 'example'" in replay.stdout and "clan-guest: READY" in replay.stdout
        # The closing hint starts it again from a fresh shell (another directory, no PATH).
        hint = demo.stdout.strip().splitlines()[-1].strip()
        assert hint.startswith("CLAN_VM_STATE_DIR=") and shlex.split(hint)[2] == "start"
        again = paste(hint, Path("/"), fresh)
        assert again.returncode == 0, again.stderr
        assert "started VM 'example'" in again.stdout
    finally:
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "clan-vm-manager"), "stop", "example", "--force"],
            env=env,
            check=False,
            capture_output=True,
        )
