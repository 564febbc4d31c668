"""The client side of the command server, without a VM: which directory it trusts with its
socket, and what a request carries."""

from __future__ import annotations

import functools
import os
import resource
import subprocess
from pathlib import Path

import pytest

from clan_vm_tasks.cli import handoff


def test_a_directory_someone_else_controls_is_not_used(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    assert handoff.private(str(mine))
    mine.chmod(0o750)
    assert not handoff.private(str(mine))  # others may enter it
    mine.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(mine)
    assert not handoff.private(str(link))  # a link could be pointed elsewhere
    assert not handoff.private(str(tmp_path / "missing"))


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory away needs root")
def test_a_directory_given_to_another_user_is_not_used(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    assert not handoff.private(str(theirs))


def test_where_a_process_runs_tells_other_limits_apart() -> None:
    here = handoff.context("self")
    assert handoff.context(os.getpid()) == here
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits, same in (((soft, hard), True), ((soft // 2, hard), False)):
        child = subprocess.Popen(
            ["sleep", "5"],
            preexec_fn=functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE, limits),
        )
        try:
            assert (handoff.context(child.pid) == here) is same
        finally:
            child.kill()
            child.wait()
