"""A failed build shows what the builder said: its last lines and the ``nix log`` command for
the rest, on every command that builds (build, start, restart, boot-test)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.nix_fixtures import NixCLI, git, ncli, needs_nix, own_flake

__all__ = ["ncli", "own_flake"]
pytestmark = needs_nix

# A builder that prints 30 lines (the last on stderr, with a terminal escape in it) and fails.
FAILING = """
      failing = derivation {
        name = "failing-kernel";
        inherit system;
        builder = busybox;
        args = [ "sh" "-c" ("for i in $(${busybox} seq 1 29); do echo compiling part $i; done; "
          + "printf 'ld: \\\\033[31mundefined\\\\033[0m reference to main\\\\n' >&2; exit 3") ];
      };
"""


def break_alpha(flake: Path) -> None:
    """alpha's kernel becomes a derivation whose builder fails."""
    text = (flake / "flake.nix").read_text()
    text = text.replace("      guest = name: {", FAILING + "      guest = name: {", 1)
    text = text.replace(
        'alpha = guest "alpha";', 'alpha = guest "alpha" // { kernel = "${failing}"; };'
    )
    (flake / "flake.nix").write_text(text)
    git(flake, "commit", "-qam", "a kernel that does not build")


def assert_builder_shown(err: str, indent: str = "") -> None:
    drv = re.search(r"builder for '(/nix/store/[0-9a-z]{32}-failing-kernel\.drv)' failed", err)
    assert drv, err
    lines = err.splitlines()
    start = next(i for i, line in enumerate(lines) if "builder for" in line)
    assert lines[start].endswith("failed with exit code 3; the last 10 lines of its log:")
    assert lines[start + 1 : start + 11] == [
        *(f"{indent}  | compiling part {i}" for i in range(21, 30)),
        f"{indent}  | ld: undefined reference to main",  # no escape sequences reach a terminal
    ]
    assert lines[start + 11] == f"{indent}  the whole log: nix log {drv.group(1)}"
    # ... and that command shows all of it.
    log = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "log", drv.group(1)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "compiling part 1\n" in log and "undefined" in log


def test_build_start_and_restart_show_the_builders_last_lines(
    ncli: NixCLI, own_flake: Path
) -> None:
    flake = str(own_flake)
    ncli.ok("create", "alpha", "--flake", flake)  # built while it still builds
    break_alpha(own_flake)
    for command in (
        ["build", "alpha", "--flake", flake],
        ["start", "alpha", "--flake", flake],
        ["restart", "alpha", "--flake", flake],
    ):
        failed = ncli.run(*command)
        assert failed.code == 1, failed
        assert "\nerror: building clanVms.x86_64-linux.alpha failed: builder for" in failed.err
        assert_builder_shown(failed.err)
    assert "starting" not in ncli.ok("status", "alpha").out


@pytest.mark.vm
def test_boot_test_shows_the_builders_last_lines(ncli: NixCLI, own_flake: Path) -> None:
    break_alpha(own_flake)
    failed = ncli.run("boot-test", "alpha", "--flake", str(own_flake))
    assert failed.code == 1 and "boot test failed for alpha" in failed.err
    row = next(line for line in failed.out.splitlines() if line.startswith("alpha"))
    assert "FAIL" in row and "failing-kernel.drv' failed with exit code 3" in row
    assert_builder_shown(failed.err, indent="  ")  # below the table, under the VM's name
