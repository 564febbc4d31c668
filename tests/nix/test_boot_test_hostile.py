"""boot-test against guests whose agent lies (a fake agent takes over the agent channel
of each VM the run starts): every VM still gets its row, the JUnit file is written with that
VM failed, and no VM is left running."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.guests.fake_agent import exec_replies, taken_over_when_opened
from tests.nix_fixtures import NixCLI, ncli, needs_nix, test_flake

__all__ = ["ncli", "test_flake"]  # fixtures
pytestmark = [needs_nix, pytest.mark.vm]


def test_a_lying_agent_fails_its_vm_and_the_run_still_reports_and_cleans_up(
    ncli: NixCLI, test_flake: Path, tmp_path: Path
) -> None:
    junit = tmp_path / "junit.xml"
    # 16 MiB on one line (the most the agent keeps): the report keeps a tail of it.
    huge = base64.b64encode(b"\x1b[2J" + b"x" * ((16 << 20) - 4)).decode()
    replies = {
        "alpha": exec_replies({"exited": True, "exitcode": 300}),  # no such exit code
        "beta": exec_replies({"exited": True, "exitcode": 1, "out-data": huge}),
    }
    with taken_over_when_opened(ncli.state_dir, replies):
        result = ncli.run(
            "boot-test", "--flake", str(test_flake), "--check", "true", "--junit", str(junit),
            timeout=400,
        )  # fmt: skip
    assert result.code == 1 and "internal error" not in result.err
    assert "boot test failed for alpha, beta" in result.err
    rows = {line.split()[0]: line for line in result.out.splitlines()[1:]}
    assert sorted(rows) == ["alpha", "beta"]
    assert "FAIL" in rows["alpha"] and "sent an invalid reply" in rows["alpha"]
    assert "exitcode is 300" in rows["alpha"]
    assert "FAIL" in rows["beta"] and "check 'true' exited 1: xxx" in rows["beta"]
    assert len(rows["beta"]) < 600 and "\x1b" not in result.out
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "2"
    assert junit.stat().st_size < 64 << 10  # no guest output pasted into it whole
    listed = json.loads(ncli.ok("list", "--json").out)
    assert {vm["name"]: vm["state"] for vm in listed} == {"alpha": "stopped", "beta": "stopped"}
