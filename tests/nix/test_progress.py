"""Progress you can see: on a terminal each phase as it happens (evaluating, building with the
derivation being built, creating, booting with the console's latest line); --quiet shows
none; without a terminal, plain lines for a log."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import READY
from tests.nix.test_trust import edit
from tests.nix_fixtures import NixCLI, ncli, needs_nix, own_flake

__all__ = ["ncli", "own_flake"]  # fixtures
pytestmark = needs_nix


def on_terminal(ncli: NixCLI, *args: str) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; its exit code and what the terminal got."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*ncli.command(), *args],
        env={**ncli.env, "COLUMNS": "200"},
        cwd=ncli.state_dir.parent,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal's other side closed: the command is done
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    return proc.wait(timeout=300), seen.decode(errors="replace")


def fresh_build(flake: Path) -> None:
    """A derivation no earlier run has built, so that nix has something to build."""
    text = (flake / "flake.nix").read_text()
    old = re.search(r'name = "clan-test-initrd[^"]*";', text)
    assert old is not None
    edit(flake, old.group(0), f'name = "clan-test-initrd-{uuid.uuid4().hex[:8]}";')


def test_a_terminal_sees_each_phase_and_a_log_sees_plain_lines(
    ncli: NixCLI, own_flake: Path
) -> None:
    fresh_build(own_flake)
    code, seen = on_terminal(ncli, "build", "--vm", "alpha", "--flake", str(own_flake))
    assert code == 0, seen
    assert f"evaluating clanVms.x86_64-linux of {own_flake}" in seen
    assert "building alpha" in seen and "clan-test-initrd-" in seen
    assert "\r\x1b[2K" in seen  # a status line, rewritten in place
    fresh_build(own_flake)
    logged = ncli.ok("build", "--vm", "alpha", "--flake", str(own_flake))
    assert "building alpha: clan-test-initrd-" in logged.err  # one line for the log
    assert "\x1b" not in logged.err and "\r" not in logged.err and "evaluating" not in logged.err
    fresh_build(own_flake)
    code, seen = on_terminal(ncli, "build", "--vm", "alpha", "--flake", str(own_flake), "--quiet")
    assert code == 0 and seen == "", seen


@pytest.mark.vm
def test_a_boot_on_a_terminal_shows_the_console_until_the_ready_text(
    ncli: NixCLI, own_flake: Path
) -> None:
    edit(own_flake, "console=ttyS0 quiet", "console=ttyS0")  # the kernel says what it does
    args = ("start", "alpha", "--flake", str(own_flake), "--wait-for", READY, "--timeout", "120")
    code, seen = on_terminal(ncli, *args)
    assert code == 0, seen
    assert "creating alpha" in seen
    # The latest console line, as the guest boots: the kernel's, then the guest's.
    booting = f"booting alpha, waiting for {READY!r}: "
    lines = [part[len(booting) :] for part in seen.split("\x1b[2K") if part.startswith(booting)]
    assert len(set(lines)) > 3, lines
    ncli.ok("stop", "alpha")
