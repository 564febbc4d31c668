"""Inside a flake checkout, a mistyped VM name is said first: before any error of the flake's
evaluation, and without the network when the flake can tell its names offline."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Guest
from tests.nix_fixtures import NixCLI, git, make_flake, ncli, needs_nix
from tests.tasks.test_bad_input import assert_input_error, snapshot

__all__ = ["ncli"]  # fixtures
pytestmark = needs_nix


def nix_calls(cli: NixCLI) -> list[list[str]]:
    if not cli.nix_log.exists():
        return []
    return [json.loads(line)["argv"] for line in cli.nix_log.read_text().splitlines()]


def test_a_name_the_flake_does_not_declare_is_said_at_once(
    ncli: NixCLI, tmp_path: Path, guest: Guest
) -> None:
    flake = make_flake(tmp_path / "flake", guest)
    result = ncli.run("start", "alpah", cwd=flake)
    assert_input_error(result.code, result.err, result.out, "no VM named 'alpah'")
    assert "did you mean 'alpha'?" in result.err
    # Its names were asked offline, and nothing was evaluated beyond them.
    calls = nix_calls(ncli)
    assert calls and all("--offline" in argv for argv in calls), calls
    assert not (ncli.state_dir / "vms" / "alpah").exists()
    # Once the flake was evaluated, its names come from the cache: no nix at all.
    ncli.ok("list", "--flake", cwd=flake)
    before, state = len(nix_calls(ncli)), snapshot(ncli.state_dir)
    again = ncli.run("start", "betta", cwd=flake)
    assert_input_error(again.code, again.err, again.out, "did you mean 'beta'?")
    assert len(nix_calls(ncli)) == before and snapshot(ncli.state_dir) == state


def test_a_flake_that_does_not_evaluate_names_the_vm_first(
    ncli: NixCLI, tmp_path: Path, guest: Guest
) -> None:
    flake = make_flake(tmp_path / "flake", guest)
    text = (flake / "flake.nix").read_text()
    (flake / "flake.nix").write_text(text.replace("cpus = 1;", "cpus = 1 +;", 1))
    git(flake, "commit", "-qam", "broken")
    result = ncli.run("start", "alpah", cwd=flake)
    assert result.code == 1, result.err
    lines = result.err.strip().splitlines()
    assert lines[0].startswith("error: no VM named 'alpah' here, and the flake "), lines
    assert "does not evaluate" in lines[0]
