"""Offline and pinned use: ``--override-input NAME REF`` on every command that evaluates a
flake, and through the flake apps, so that a flake whose input cannot be fetched (offline,
or a local checkout wanted instead) needs no hand-edited lock file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import READY, Guest
from tests.nix_fixtures import NixCLI, git, make_flake, ncli, needs_nix
from tests.web.served import serve

__all__ = ["ncli"]
pytestmark = needs_nix

UNREACHABLE = "github:clan-vm-tasks-test/no-such-repository"


@pytest.fixture
def flake_with_input(tmp_path: Path, guest: Guest) -> tuple[Path, Path]:
    """The test flake with an input it cannot fetch here (its VMs' memory comes from it),
    and a local checkout of that input."""
    dep = tmp_path / "dep"
    dep.mkdir()
    (dep / "flake.nix").write_text("{ outputs = _: { memory = 160; }; }\n")
    git(dep, "init", "-q")
    git(dep, "add", "-A")
    git(dep, "commit", "-qm", "dep")
    flake = make_flake(tmp_path / "flake", guest)
    text = (flake / "flake.nix").read_text()
    text = text.replace(
        "{\n  outputs = { self }:",
        f'{{\n  inputs.dep.url = "{UNREACHABLE}";\n  outputs = {{ self, dep }}:',
    )
    text = text.replace("memory = 192;", "memory = dep.memory;")
    (flake / "flake.nix").write_text(text)
    git(flake, "commit", "-qam", "an input")
    return flake, dep


def test_every_command_that_evaluates_takes_override_input(
    ncli: NixCLI, flake_with_input: tuple[Path, Path]
) -> None:
    flake, dep = flake_with_input
    refs = ["--flake", str(flake)]
    local = ["--override-input", "dep", f"git+file://{dep}"]
    # Without it, the input cannot be fetched.
    unreachable = ncli.run("eval", "alpha", *refs)
    assert unreachable.code == 1 and "could not be fetched" in unreachable.err
    assert "--override-input NAME git+file:///PATH" in unreachable.err
    # With it: the flake is evaluated with the checkout, and its lock file is not written.
    evaluated = json.loads(ncli.ok("eval", "alpha", *refs, *local).out)
    assert evaluated["alpha"]["memory"] == 160
    assert "alpha" in ncli.ok("build", "alpha", *refs, *local).out
    listed = json.loads(ncli.ok("list", *refs, *local, "--json").out)
    assert {row["name"]: row["memory"] for row in listed} == {"alpha": 160, "beta": 160}
    shown = json.loads(ncli.ok("show", "alpha", *refs, *local, "--json").out)
    assert shown["memory"] == 160
    # The dashboard lists the declared VMs as list --flake does.
    served = serve(ncli, *refs, *local, cwd=flake)
    try:
        declared = {vm["name"]: vm["memory"] for vm in served.ok("GET", "/api/vms")}
    finally:
        served.stop()
    assert declared == {"alpha": 160, "beta": 160}
    # NAME=REF is the same (invoke's own command line takes only that form).
    ncli.ok("create", "alpha", *refs, "--override-input", f"dep=git+file://{dep}")
    # The VM remembers the inputs it was made with: start and restart need no repetition.
    ncli.ok("start", "alpha", "--wait-for", READY, "--timeout", "120")
    restarted = ncli.ok("restart", "alpha", "--wait-for", READY)
    assert "restarted VM 'alpha' (pid " in restarted.out
    assert f": {READY!r} appeared after " in restarted.out  # as start says it
    ncli.ok("stop", "alpha")
    assert not (flake / "flake.lock").exists()
    tested = ncli.ok("boot-test", "beta", *refs, *local, timeout=300).out
    assert tested.splitlines()[1].split()[:2] == ["beta", "pass"]
    # A malformed one is refused before anything happens.
    bad = ncli.run("eval", *refs, "--override-input", "dep")
    assert (
        bad.code == 2 and "--override-input takes an input's name and a flake reference" in bad.err
    )


def run_app(ncli: NixCLI, flake: Path, dep: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """nix run --override-input dep DEP FLAKE#vm-eval -- ARGS, in the checkout."""
    argv = ["nix", "--extra-experimental-features", "nix-command flakes"]
    argv += ["--option", "substituters", "", "run", "--override-input", "dep", f"git+file://{dep}"]
    argv += [f"{flake}#vm-eval", "--", *args]
    env = {**ncli.env, "PATH": f"{Path(ncli.command()[0]).parent}:/usr/bin:/bin"}
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, cwd=flake, timeout=300, check=False
    )


def test_the_flake_apps_evaluate_with_the_inputs_nix_run_used(
    ncli: NixCLI, flake_with_input: tuple[Path, Path], tmp_path: Path
) -> None:
    flake, dep = flake_with_input
    # nix run evaluates the app with the checkout; the tool then evaluates the flake with
    # the very sources nix run used, without being told again (and without fetching).
    ran = run_app(ncli, flake, dep, "alpha")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["alpha"]["memory"] == 160
    # What the tool is given after -- wins.
    other = tmp_path / "other"
    other.mkdir()
    (other / "flake.nix").write_text("{ outputs = _: { memory = 176; }; }\n")
    git(other, "init", "-q")
    git(other, "add", "-A")
    given = run_app(ncli, flake, dep, "alpha", "--override-input", "dep", f"git+file://{other}")
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout)["alpha"]["memory"] == 176
    assert not (flake / "flake.lock").exists()
