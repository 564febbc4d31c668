"""The suite's own set-up: tests of one ``xdist_group`` share one worker, so a module that
boots one guest for all its tests (tests/guests/test_debian.py) boots it once, not once per
worker (which tripled the load of the slowest tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = """
import os, time, pytest
pytestmark = [pytest.mark.xdist_group("one")]

@pytest.mark.parametrize("i", range(6))
def test_worker(i):
    time.sleep(0.2)
    print("ran on", os.environ["PYTEST_XDIST_WORKER"])
"""


def test_a_group_runs_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_probe.py").write_text(PROBE)
    argv = [sys.executable, "-m", "pytest", "-n", "3", "--dist", "loadgroup", "-p",
            "no:cacheprovider", "-q", "-rP", "test_probe.py"]  # fmt: skip
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    workers = {line.split()[-1] for line in result.stdout.splitlines() if line.startswith("ran on")}
    assert len(workers) == 1, result.stdout
