"""virtiofs shares on the local QEMU backend: files go both ways through a writable share, a
read-only one is enforced by the host whatever the guest mounts, and no virtiofsd outlives its
VM, whether it stops, crashes, or its start fails or is killed before QEMU came.

The CLI has no share flag (shares come from definitions), so each VM is created through the
Python API and driven with the CLI, as a user of a flake would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clan_vm_tasks import lifecycle
from clan_vm_tasks.backends.qemu import virtiofs
from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.schema import validate
from clan_vm_tasks.state.store import VMPaths
from tests.conftest import CLI, READY, Guest, Result
from tests.vmhelpers import history_actions, status


def _unable() -> str | None:
    """Why virtiofs shares cannot be served here (e.g. in a chroot, where no private mount
    namespace can be made), as the tool would say it."""
    sample = validate(
        lifecycle.VMConfig,
        {"name": "probe", "shares": {"data": {"source": "/srv", "type": "virtiofs"}}},
        "VM",
    )
    return virtiofs.share_problem(sample)


UNABLE = _unable()
pytestmark = [pytest.mark.vm, pytest.mark.skipif(UNABLE is not None, reason=str(UNABLE))]


def virtiofsds(under: Path) -> list[int]:
    """Live virtiofsd processes (whatever their parent) of the VMs whose state is UNDER:
    named by their socket in a VM's runtime directory (argv[0]), or serving a directory
    UNDER (a read-only share serves the bind mount beside its socket)."""
    runs = [str(VMPaths(vm).run) for vm in under.glob("**/vms/*") if vm.is_dir()]
    found = []
    for entry in os.listdir("/proc"):
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        mark = cmdline.split("\0", 1)[0]
        if comm == "virtiofsd" and (
            f"source={under}" in cmdline
            or any(mark.startswith(f"virtiofsd:{run}/") for run in runs)
        ):
            found.append(int(entry))
    return found


@pytest.fixture(autouse=True)
def no_virtiofsd_left(tmp_path: Path) -> Iterator[None]:
    """A failed test must not leave a virtiofsd behind (conftest ends only QEMU)."""
    yield
    for pid in virtiofsds(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def create(cli: CLI, guest: Guest, name: str, shares: dict[str, Any], **extra: Any) -> None:
    store = lifecycle.open_store(lifecycle.Settings(state_dir=cli.state_dir, accel="tcg"))
    config = validate(
        lifecycle.VMConfig,
        {
            "name": name,
            "cpus": 1,
            "memory": 192,
            "disk_size": 64,
            "kernel": guest.kernel,
            "initrd": guest.initrd,
            "append": "console=ttyS0 quiet no_timer_check",
            "shares": shares,
            **extra,
        },
        "VM",
    )
    lifecycle.create(store, config)


def boot(cli: CLI, name: str) -> None:
    cli.ok("start", name, "--wait-for", READY, "--wait-for-agent", "--timeout", "120")


def in_guest(cli: CLI, name: str, line: str) -> Result:
    return cli.run("exec", name, "--", "sh", "-c", line)


def test_a_writable_share_carries_files_both_ways_and_its_virtiofsd_ends_with_the_vm(
    cli: CLI, guest: Guest, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_text("from the host\n")
    shares = {
        "data": {"source": str(data), "type": "virtiofs", "readOnly": False},
        "own": {"type": "virtiofs", "readOnly": False},  # the VM's own directory
    }
    create(cli, guest, "vfs", shares)
    boot(cli, "vfs")
    assert virtiofsds(tmp_path)  # one per share (and its sandbox), beside QEMU
    mount = "mkdir -p /mnt/x /mnt/own && mount -t virtiofs data /mnt/x"
    assert in_guest(cli, "vfs", f"{mount} && mount -t virtiofs own /mnt/own").code == 0
    assert cli.ok("exec", "vfs", "--", "cat", "/mnt/x/file").out == "from the host\n"
    in_guest(cli, "vfs", "echo from the guest > /mnt/x/back && echo mine > /mnt/own/f && sync")
    assert (data / "back").read_text() == "from the guest\n"
    assert (cli.state_dir / "vms" / "vfs" / "shares" / "own" / "f").read_text() == "mine\n"

    run_dir = Path(json.loads(cli.ok("show", "vfs", "--json").out)["qmp_socket"]).parent
    assert "(acpi)" in cli.ok("stop", "vfs").out
    assert virtiofsds(tmp_path) == []
    assert list(run_dir.glob("virtiofs-*.sock")) == []


def test_a_read_only_share_refuses_the_guests_writes_even_mounted_read_write(
    cli: CLI, guest: Guest, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_text("original\n")
    create(cli, guest, "ro", {"data": {"source": str(data), "type": "virtiofs"}})
    boot(cli, "ro")
    assert in_guest(cli, "ro", "mkdir -p /mnt/x && mount -t virtiofs -o rw data /mnt/x").code == 0
    assert cli.ok("exec", "ro", "--", "cat", "/mnt/x/file").out == "original\n"
    for write in ("echo changed > /mnt/x/file", "echo new > /mnt/x/new", "rm /mnt/x/file"):
        refused = in_guest(cli, "ro", write)
        assert refused.code != 0 and "Read-only file system" in refused.err, (write, refused)
    assert sorted(p.name for p in data.iterdir()) == ["file"]
    assert (data / "file").read_text() == "original\n"

    # QEMU killed from outside: its virtiofsd goes with it, and the next command says so.
    os.kill(status(cli, "ro")["pid"], signal.SIGKILL)
    assert status(cli, "ro")["state"] == "crashed"
    assert virtiofsds(tmp_path) == []


# Stand in for QEMU and kill the start that runs them: at once (mostly before virtiofsd
# was exec'd: its launcher sees the start gone and gives up), or once virtiofsd waits.
AT_ONCE = "#!/bin/sh\nkill -KILL $PPID\n"
ONCE_VIRTIOFSD_WAITS = """#!{python}
import os, signal, time
while True:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = open(f"/proc/{{pid}}/comm").read().strip()
            cmdline = open(f"/proc/{{pid}}/cmdline").read()
        except OSError:
            continue
        if comm == "virtiofsd" and cmdline.startswith({mark!r}):
            os.kill(os.getppid(), signal.SIGKILL)
            raise SystemExit(1)
    time.sleep(0.02)
"""


@pytest.mark.parametrize("virtiofsd_waits", [True, False], ids=["virtiofsd-waits", "at-once"])
def test_a_start_killed_when_qemu_is_launched_leaves_no_virtiofsd(
    cli: CLI, guest: Guest, tmp_path: Path, virtiofsd_waits: bool
) -> None:
    """The worst moment: virtiofsd waits for a QEMU that will never come."""
    data = tmp_path / "data"
    data.mkdir()
    create(cli, guest, "killed", {"data": {"source": str(data), "type": "virtiofs"}})
    fake = tmp_path / "bin" / "qemu-system-x86_64"
    fake.parent.mkdir()
    run = VMPaths(cli.state_dir / "vms" / "killed").run
    waiting = ONCE_VIRTIOFSD_WAITS.format(python=sys.executable, mark=f"virtiofsd:{run}/")
    fake.write_text(waiting if virtiofsd_waits else AT_ONCE)
    fake.chmod(0o755)
    real_path = cli.env["PATH"]
    cli.env["PATH"] = f"{fake.parent}:{real_path}"
    assert cli.run("start", "killed").code == -signal.SIGKILL
    cli.env["PATH"] = real_path
    if virtiofsd_waits:
        assert virtiofsds(tmp_path)  # left waiting by the killed command

    listed = {vm["name"]: vm for vm in json.loads(cli.ok("list", "--json").out)}
    assert listed["killed"]["state"] == "stopped"
    assert virtiofsds(tmp_path) == []
    assert history_actions(cli, "killed")[0] == "start"  # recorded as a failed start
    if virtiofsd_waits:
        boot(cli, "killed")  # and the VM starts as if nothing had happened
        assert "(acpi)" in cli.ok("stop", "killed").out
        assert virtiofsds(tmp_path) == []


def test_a_qemu_that_fails_to_start_takes_its_virtiofsd_with_it(
    cli: CLI, guest: Guest, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shares = {"data": {"source": str(data), "type": "virtiofs"}}
    create(cli, guest, "broken", shares, qemuArgs=["-device", "no-such-device"])
    failed = cli.run("start", "broken")
    assert failed.code == 1 and "QEMU failed to start" in failed.err, failed
    assert "no-such-device" in failed.err
    assert virtiofsds(tmp_path) == []  # at once, not only after the next command
    assert status(cli, "broken")["state"] == "stopped"


def test_where_virtiofsd_cannot_enforce_read_only_the_share_is_refused_untouched(
    cli: CLI, guest: Guest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not root and no user namespaces: a read-only virtiofs share is refused at create and
    at start (exit 2), naming 9p, before anything changes."""
    data = tmp_path / "data"
    data.mkdir()
    shares = {"data": {"source": str(data), "type": "virtiofs"}}
    create(cli, guest, "later", shares)  # made where it could run
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(virtiofs, "_user_namespaces", lambda: False)
    with pytest.raises(InvalidInput) as refused:
        create(cli, guest, "never", shares)
    message = str(refused.value)
    assert refused.value.exit_code == 2 and "\n" not in message
    assert "share data of VM 'never' is read-only virtiofs" in message
    assert 'use type = "9p"' in message
    assert not (cli.state_dir / "vms" / "never").exists()

    settings = lifecycle.Settings(state_dir=cli.state_dir, accel="tcg")
    with pytest.raises(InvalidInput, match="is read-only virtiofs"):
        lifecycle.start(lifecycle.open_store(settings), settings, "later")
    assert history_actions(cli, "later") == ["create"]
    assert status(cli, "later")["state"] == "stopped"
    assert virtiofsds(tmp_path) == []
