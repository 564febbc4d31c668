"""Real Nix end to end: the offline test flake evaluated, built and booted."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import READY
from tests.nix_fixtures import NixCLI, git, ncli, needs_nix, own_flake, test_flake

__all__ = ["ncli", "own_flake", "test_flake"]  # fixtures
pytestmark = needs_nix
SYSTEM = "x86_64-linux"


def test_eval_prints_the_definitions_with_store_paths(ncli: NixCLI, test_flake: Path) -> None:
    out = json.loads(ncli.ok("eval", "--flake", str(test_flake)).out)
    assert sorted(out) == ["alpha", "beta"]
    alpha = out["alpha"]
    assert alpha["cpus"] == 1 and alpha["diskSize"] == 64
    assert alpha["bootTest"] == {"expect": READY}
    assert alpha["initrd"].startswith("/nix/store/") and alpha["initrd"].endswith(
        "-clan-test-initrd"
    )
    assert alpha["kernel"].endswith("/vmlinuz")


def test_build_realises_with_one_nix_build_per_vm_and_keeps_gc_roots(
    ncli: NixCLI, test_flake: Path
) -> None:
    out = ncli.ok("build", "alpha", "--flake", str(test_flake)).out
    initrd = next(line.split()[-1] for line in out.splitlines() if " initrd " in line)
    assert Path(initrd).is_file() and Path(initrd).stat().st_size > 1 << 20
    assert ncli.nix_calls("build") == 1
    roots = {os.path.realpath(p) for p in (ncli.state_dir / "gcroots" / "alpha").glob("*/result*")}
    assert initrd in roots
    # Built and rooted already: a second build asks nix nothing at all.
    ncli.ok("build", "alpha", "--flake", str(test_flake))
    assert ncli.nix_calls() == 2  # one evaluation, one build


def test_a_warm_cache_runs_no_nix_and_an_uncommitted_edit_invalidates_it(
    ncli: NixCLI, own_flake: Path
) -> None:
    flake = str(own_flake)
    listed = ncli.ok("list", "--flake", flake, "--json").out
    assert {v["name"]: v["state"] for v in json.loads(listed)} == {
        "alpha": "not-created",
        "beta": "not-created",
    }
    assert ncli.nix_calls("eval") == 1
    ncli.ok("list", "--flake", flake)
    ncli.ok("show", "alpha", "--flake", flake)
    ncli.ok("create", "alpha", "--flake", flake)
    ncli.ok("show", "alpha", "--flake", flake)
    assert ncli.nix_calls("eval") == 1
    text = (own_flake / "flake.nix").read_text()
    (own_flake / "flake.nix").write_text(text.replace("memory = 192;", "memory = 200;"))
    shown = json.loads(ncli.ok("show", "alpha", "--flake", flake, "--json").out)
    assert shown["declared"]["memory"] == 200
    assert ncli.nix_calls("eval") == 2
    # Committing the same content changes nothing Nix sees.
    git(own_flake, "commit", "-qam", "more memory")
    ncli.ok("list", "--flake", flake)
    assert ncli.nix_calls("eval") == 2


def test_a_wrong_type_names_the_vm_and_attribute(ncli: NixCLI, own_flake: Path) -> None:
    text = (own_flake / "flake.nix").read_text()
    (own_flake / "flake.nix").write_text(text.replace("cpus = 1;", 'cpus = "two";'))
    result = ncli.run("start", "alpha", "--flake", str(own_flake))
    assert result.code == 2
    assert result.err.startswith(f"error: clanVms.{SYSTEM}.alpha.cpus: ")
    assert '"two"' in result.err and len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err


def test_an_evaluation_error_names_the_vm_and_attribute(ncli: NixCLI, own_flake: Path) -> None:
    text = (own_flake / "flake.nix").read_text()
    broken = text.replace('beta = guest "beta";', 'beta = guest "beta" // { memory = 1 + "x"; };')
    (own_flake / "flake.nix").write_text(broken)
    result = ncli.run("eval", "beta", "--flake", str(own_flake))
    assert result.code == 1, result.err
    # One error line, and where the mistake is: in the user's checkout, not the store copy.
    line, location = result.err.rstrip().splitlines()
    assert line.startswith(f"error: nix evaluation of clanVms.{SYSTEM}.beta.memory failed: ")
    assert line.endswith("cannot add a string to an integer")
    assert location.startswith(f"  at {own_flake}/flake.nix:")
    assert "Traceback" not in result.err
    # The other VM is still usable.
    assert ncli.ok("eval", "alpha", "--flake", str(own_flake)).out


def test_unknown_flake_and_undeclared_vm_are_one_line_errors(
    ncli: NixCLI, test_flake: Path, tmp_path: Path
) -> None:
    result = ncli.run("start", "gamma", "--flake", str(test_flake))
    assert result.code == 2
    assert "declares no VM 'gamma'" in result.err and "alpha, beta" in result.err
    result = ncli.run("eval", "--flake", str(tmp_path / "nowhere"))
    assert result.code == 2 and "no flake.nix" in result.err


@pytest.mark.vm
def test_start_through_clan_vm_manager_then_definition_changes_apply(
    ncli: NixCLI, own_flake: Path
) -> None:
    flake = str(own_flake)
    ncli.ok("start", "alpha", "--flake", flake, "--wait-for", READY, "--timeout", "120")
    assert "clan-guest: cpus 1" in ncli.ok("console", "alpha", "--log").out
    ncli.ok("stop", "alpha")
    text = (own_flake / "flake.nix").read_text()
    (own_flake / "flake.nix").write_text(
        text.replace("cpus = 1;", "cpus = 2;").replace("diskSize = 64;", "diskSize = 96;")
    )
    started = ncli.ok("start", "alpha", "--flake", flake, "--wait-for", READY, "--timeout", "120")
    assert "applied the changed definition of 'alpha': cpus, disk_size" in started.err
    log = ncli.ok("console", "alpha", "--log").out
    assert "clan-guest: cpus 2" in log and "clan-guest: disk vda 96 MiB" in log
    ncli.ok("stop", "alpha")
    # A smaller disk: the VM keeps its disk (a disk never shrinks) and still starts.
    (own_flake / "flake.nix").write_text(text.replace("diskSize = 64;", "diskSize = 32;"))
    kept = ncli.ok("start", "alpha", "--flake", flake, "--wait-for", READY, "--timeout", "120")
    assert "keeps its 96 MiB disk, larger than the 32 MiB declared" in kept.err
    assert "clan-vm-manager delete alpha --force" in kept.err
    assert "clan-guest: disk vda 96 MiB" in ncli.ok("console", "alpha", "--log").out
    assert json.loads(ncli.ok("status", "alpha", "--json").out)["disk_size"] == 96
    ncli.ok("stop", "alpha")


@pytest.mark.vm
def test_invoke_start_uses_the_flake_around_the_working_directory(
    ncli: NixCLI, test_flake: Path
) -> None:
    # An untracked tasks.py: invoke finds it, Nix does not see it.
    (test_flake / "tasks.py").write_text(
        "from invoke.collection import Collection\nfrom clan_vm_tasks import tasks\n"
        "ns = Collection.from_module(tasks)\n"
    )
    args = ("start", "beta", "--wait-for", READY, "--timeout", "120")
    started = ncli.ok(*args, entry="invoke", cwd=test_flake)
    assert f"created VM 'beta' from {test_flake}" in started.err
    assert ncli.ok("status", "beta").out.startswith("beta: running")
    ncli.ok("stop", "beta")


@pytest.mark.vm
def test_the_flake_app_program_starts_a_vm(ncli: NixCLI, test_flake: Path) -> None:
    proc = ncli.nix_run(test_flake, "vm-start", "alpha", "--wait-for", READY, "--timeout", "120")
    assert proc.returncode == 0, proc.stderr
    assert "started VM 'alpha'" in proc.stdout
    assert ncli.ok("status", "alpha").out.startswith("alpha: running")
    ncli.ok("stop", "alpha")


@pytest.mark.vm
def test_boot_test_boots_every_vm_and_writes_junit(
    ncli: NixCLI, test_flake: Path, tmp_path: Path
) -> None:
    junit = tmp_path / "out" / "junit.xml"
    check = ["--check", "sleep 1; echo checked"]
    result = ncli.ok(
        "boot-test", "--flake", str(test_flake), *check, "--junit", str(junit), timeout=400
    )
    rows = {line.split()[0]: line.split()[1] for line in result.out.splitlines()[1:]}
    assert rows == {"alpha": "pass", "beta": "pass"}
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "0"
    # Each testcase carries its real time: the boot until the ready text, the check's run.
    times = {case.get("name"): float(case.get("time") or 0) for case in suite.iter("testcase")}
    assert times["alpha"] > 0.5 and times["beta"] > 0.5
    assert 1.0 <= times["alpha: sleep 1; echo checked"] < 30
    assert float(suite.get("time") or 0) >= sum(times.values()) - 0.01
    assert json.loads(ncli.ok("list", "--json").out)[0]["state"] == "stopped"
    # A ready text that never comes: the VM fails, the run exits non-zero, nothing is left running.
    failed = ncli.run(
        "boot-test",
        "beta",
        "--flake",
        str(test_flake),
        "--expect",
        "never printed",
        "--timeout",
        "8",
        "--junit",
        str(junit),
    )
    assert failed.code == 1 and "boot test failed for beta" in failed.err
    assert "FAIL" in failed.out
    assert ET.parse(junit).getroot().get("failures") == "1"
    assert {v["state"] for v in json.loads(ncli.ok("list", "--json").out)} == {"stopped"}


def test_a_base_image_from_the_flake_becomes_a_read_only_backing_file(
    ncli: NixCLI, own_flake: Path
) -> None:
    base = own_flake / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 64k", str(base)],
        check=True,
        capture_output=True,
    )
    git(own_flake, "add", "base.qcow2")
    text = (own_flake / "flake.nix").read_text()
    (own_flake / "flake.nix").write_text(
        text.replace("diskSize = 64;", 'diskSize = 64; baseImage = "${self}/base.qcow2";')
    )
    ncli.ok("create", "alpha", "--flake", str(own_flake))
    disk = json.loads(ncli.ok("show", "alpha", "--json").out)["disks"][0]
    backing = disk["backing_file"]
    assert backing.startswith("/nix/store/") and backing.endswith("base.qcow2")
    # The overlay shows the base's content without copying it.
    read = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0xab 0 64k", disk["path"]],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "read 65536/65536 bytes" in read.stdout

    (own_flake / "flake.nix").write_text(text)  # the definition no longer names a base image
    refused = ncli.run("start", "alpha", "--flake", str(own_flake))
    assert refused.code == 1 and "base image of VM 'alpha' changed" in refused.err


def test_a_flake_directory_with_an_inventory_is_not_thereby_the_clan(
    ncli: NixCLI, own_flake: Path
) -> None:
    (own_flake / "inventory.json").write_text('{\n  "machines": {}\n}')
    ncli.ok("create", "alpha", "--flake", str(own_flake), cwd=own_flake)
    assert json.loads((own_flake / "inventory.json").read_text())["machines"] == {}
    # Named, it is the clan: the ad-hoc VM becomes a machine, and the user is told so.
    created = ncli.ok("create", "beta", "--flake", str(own_flake), "--clan-dir", str(own_flake))
    machines = json.loads((own_flake / "inventory.json").read_text())["machines"]
    assert machines["beta"]["tags"] == ["vm"]
    assert "`clan machines update` now treats it as a machine to deploy" in created.err


@pytest.mark.vm
def test_boot_test_counts_its_checks_in_words(ncli: NixCLI, test_flake: Path) -> None:
    one = ncli.ok("boot-test", "beta", "--flake", str(test_flake), "--check", "true", timeout=400)
    assert "1 check passed" in one.out and "1 checks" not in one.out, one.out
    two = ncli.ok(
        "boot-test", "beta", "--flake", str(test_flake), "--check", "true", "--check", "true",
        timeout=400,
    )  # fmt: skip
    assert "2 checks passed" in two.out, two.out
