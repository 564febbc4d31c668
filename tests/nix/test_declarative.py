"""A flake's definition is applied declaratively: a running VM is never rewritten (the change
is pending until the next start, and restart applies it), a command that fails changes
nothing, and a flake in the Nix store stays untouched (the apps act on the user's checkout)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import READY
from tests.nix.test_trust import edit
from tests.nix_fixtures import NixCLI, ncli, needs_nix, own_flake

__all__ = ["ncli", "own_flake"]  # fixtures
pytestmark = needs_nix
NIX = ["nix", "--extra-experimental-features", "nix-command flakes", "--option", "substituters", ""]


def memory(ncli: NixCLI, name: str) -> int:
    return int(json.loads(ncli.ok("status", name, "--json").out)["memory"])


@pytest.mark.vm
def test_a_running_vm_keeps_its_definition_until_restart_applies_the_new_one(
    ncli: NixCLI, own_flake: Path
) -> None:
    flake = str(own_flake)
    ncli.ok("start", "alpha", "--flake", flake, "--wait-for", READY, "--timeout", "120")
    edit(own_flake, "memory = 192;", "memory = 256;")
    # start of a running VM: an error that changes nothing, evaluated or not.
    again = ncli.run("start", "alpha", "--flake", flake)
    assert again.code == 1 and "already running" in again.err
    assert memory(ncli, "alpha") == 192
    # Applying the flake to a running VM: pending, status says what the VM runs.
    pending = ncli.ok("create", "alpha", "--flake", flake)
    assert "the definition of 'alpha' changed (memory" in pending.err
    assert "it applies at the next start (the VM is running" in pending.err
    assert memory(ncli, "alpha") == 192
    # status and show say what waits, as for a change made with set.
    waits = json.loads(ncli.ok("status", "alpha", "--json").out)["pending"]
    assert waits["changes"]["memory"] == {"from": 192, "to": 256}
    assert "at its next start: memory 192 -> 256 MiB" in ncli.ok("status", "alpha").out
    # A restart whose evaluation fails stops nothing.
    edit(own_flake, "memory = 256;", 'memory = 256 + "x";')
    broken = ncli.run("restart", "alpha", "--wait-for", READY)
    assert broken.code == 1 and "cannot add a string to an integer" in broken.err
    assert ncli.ok("status", "alpha").out.startswith("alpha: running")
    # restart re-evaluates like start (the VM's own flake) and applies the change between.
    edit(own_flake, 'memory = 256 + "x";', "memory = 256;")
    restarted = ncli.ok("restart", "alpha", "--wait-for", READY, "--timeout", "60")
    assert "applied the changed definition of 'alpha': memory" in restarted.err
    assert memory(ncli, "alpha") == 256
    assert json.loads(ncli.ok("status", "alpha", "--json").out)["pending"] is None
    ncli.ok("stop", "alpha")


@pytest.mark.vm
def test_a_start_that_fails_leaves_the_definition_as_it_was(ncli: NixCLI, own_flake: Path) -> None:
    flake = str(own_flake)
    ncli.ok("create", "alpha", "--flake", flake)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        forward = f"network.forwardPorts = [ {{ hostPort = {port}; guestPort = 22; }} ];"
        edit(own_flake, "memory = 192;", f"memory = 256; {forward}")
        failed = ncli.run("start", "alpha", "--flake", flake)
    assert failed.code == 1, failed
    status = json.loads(ncli.ok("status", "alpha", "--json").out)
    assert status["state"] == "stopped" and status["memory"] == 192 and status["forwards"] == []
    history = json.loads(ncli.ok("history", "--vm", "alpha", "--json").out)
    assert history[0]["action"] == "reconfigure"  # newest first: the definition went back
    details = history[0]["details"]
    assert details.startswith("reverted after a failed start: memory, ") and "network" in details
    assert history[1]["action"] == "start" and history[1]["result"] == "failed"


def store_copy(flake: Path) -> str:
    """The flake's copy in the Nix store, as Nix makes it for `nix run`."""
    meta = subprocess.run(
        [*NIX, "flake", "metadata", "--json", str(flake)],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(meta.stdout)["path"])


def test_a_flake_in_the_store_is_read_only(ncli: NixCLI, own_flake: Path, tmp_path: Path) -> None:
    (own_flake / "inventory.json").write_text('{\n  "machines": {}\n}\n')
    subprocess.run(["git", "-C", str(own_flake), "add", "inventory.json"], check=True)
    copy = store_copy(own_flake)
    created = ncli.ok("create", "alpha", "--flake", copy, "--clan-dir", copy, cwd=tmp_path)
    assert f"created VM 'alpha' from {copy} (read-only, in the Nix store)" in created.err
    assert "is in the Nix store (read-only): the clan inventory is not updated" in created.err
    tracked = subprocess.check_output(["git", "-C", str(own_flake), "ls-files"], text=True)
    # No lock file, no inventory change: nothing was written there.
    assert sorted(os.listdir(copy)) == sorted({p.split("/")[0] for p in tracked.split()})
    assert json.loads(Path(copy, "inventory.json").read_text()) == {"machines": {}}
    verify = subprocess.run([*NIX, "store", "verify", copy], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    # The copy is kept from the garbage collector with what the VM was built from.
    roots = {os.path.realpath(p) for p in (ncli.state_dir / "gcroots" / "alpha").glob("*/result*")}
    assert copy in roots


def test_the_apps_act_on_the_checkout_around_the_working_directory(
    ncli: NixCLI, own_flake: Path, tmp_path: Path
) -> None:
    def app(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        bindir = Path(ncli.command()[0]).parent
        return subprocess.run(
            [*NIX, "run", f"{own_flake}#vm-create", "--", *args],
            env={**ncli.env, "PATH": f"{bindir}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=300,
            check=False,
        )

    inside = app("alpha", cwd=own_flake / "guest")
    assert inside.returncode == 0, inside.stderr
    assert f"created VM 'alpha' from {own_flake}\n" in inside.stderr  # the checkout, by name
    # Outside a checkout of it, the app uses the flake's own copy, which is read-only.
    outside = app("beta", cwd=tmp_path)
    assert outside.returncode == 0, outside.stderr
    assert "(read-only, in the Nix store)" in outside.stderr


@pytest.mark.vm
def test_extra_disks_and_a_display_are_declared_like_the_rest(
    ncli: NixCLI, own_flake: Path
) -> None:
    flake = str(own_flake)
    edit(
        own_flake,
        "memory = 192;",
        "memory = 192; extraDisks.data.size = 16; extraDisks.x10.size = 2; "
        "extraDisks.x2.size = 4; graphics = true;",
    )
    ncli.ok("start", "alpha", "--flake", flake, "--wait-for", READY, "--timeout", "120")
    assert "clan-guest: disk vdb 16 MiB" in ncli.ok("console", "alpha", "--log").out
    shown = json.loads(ncli.ok("show", "alpha", "--json").out)
    assert Path(shown["spice_socket"]).is_socket()  # remote-viewer spice+unix://...
    # In the order the guest sees them (x2 before x10), as /dev/vdb, vdc, vdd.
    assert [d["virtual_size"] for d in shown["disks"]] == [64, 16, 4, 2]
    assert [Path(d["path"]).name for d in shown["disks"][1:]] == [
        "disk-data.qcow2", "disk-x2.qcow2", "disk-x10.qcow2",
    ]  # fmt: skip
    ncli.ok("stop", "alpha")
    edit(own_flake, "extraDisks.data.size = 16;", "extraDisks.data.size = 8;")
    kept = ncli.ok("create", "alpha", "--flake", flake)
    assert "keeps its 16 MiB extra disk 'data', larger than the 8 MiB declared" in kept.err
    edit(own_flake, "extraDisks.data.size = 8;", "extraDisks.data.size = 32;")
    ncli.ok("create", "alpha", "--flake", flake)
    shown = json.loads(ncli.ok("show", "alpha", "--json").out)
    assert shown["disks"][1]["virtual_size"] == 32
    deleted = ncli.ok("delete", "alpha")
    assert "extra disks of 'alpha' kept at" in deleted.err
    assert len(list((ncli.state_dir / "kept-disks").glob("alpha-data-*.qcow2"))) == 1


def test_list_marks_a_created_vm_whose_definition_no_longer_evaluates(
    ncli: NixCLI, own_flake: Path
) -> None:
    flake = str(own_flake)
    ncli.ok("create", "alpha", "--flake", flake)
    edit(own_flake, 'alpha = guest "alpha";', 'alpha = guest "alpha" // { memory = 1 + "x"; };')
    rows = {r["name"]: r for r in json.loads(ncli.ok("list", "--flake", flake, "--json").out)}
    assert rows["alpha"]["state"] == "stopped" and rows["alpha"]["memory"] == 192
    assert "cannot add a string to an integer" in rows["alpha"]["eval_error"]
    assert rows["beta"]["state"] == "not-created" and rows["beta"]["eval_error"] is None


def test_errors_point_at_the_file_and_the_line_of_the_checkout(
    ncli: NixCLI, own_flake: Path
) -> None:
    flake = str(own_flake)
    edit(own_flake, "memory = 192;", "memory = 192", commit=False)
    broken = ncli.run("eval", "--flake", flake)
    line, location = broken.err.rstrip().splitlines()
    assert broken.code == 1 and "syntax error" in line
    assert location.startswith(f"  at {own_flake}/flake.nix:")
    # A file the flake names but git does not track: Nix does not see it.
    edit(own_flake, "memory = 192", "memory = 192;", commit=False)
    (own_flake / "initrd.img").write_text("not tracked")
    edit(own_flake, "inherit initrd;", "initrd = ./initrd.img;", commit=False)
    missing = ncli.run("eval", "alpha", "--flake", flake)
    assert missing.code == 1
    assert f"{own_flake}/initrd.img exists, but git does not track it" in missing.err
    assert "git add initrd.img?" in missing.err
