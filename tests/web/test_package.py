"""A wheel built for release carries the page and xterm.js with its licence (fetched by
setup, never committed)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from clan_vm_tasks.web import assets
from tests.conftest import ROOT


def test_xterm_is_not_in_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "clan_vm_tasks/web/static"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked and not [path for path in tracked if "/vendor/" in path]


@pytest.mark.skipif(
    not (assets.STATIC / "vendor").is_dir(), reason="xterm.js not fetched (./scripts/setup)"
)
def test_a_wheel_carries_the_page_and_xterm_with_its_licence(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("clan_vm_tasks-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for file in ("index.html", "app.js", "style.css"):
        assert f"clan_vm_tasks/web/static/{file}" in names
    for file in assets.VENDOR_FILES:
        assert f"clan_vm_tasks/web/static/vendor/{file}" in names
    licence = zipfile.ZipFile(wheel).read("clan_vm_tasks/web/static/vendor/xterm/LICENSE")
    assert b"The xterm.js authors" in licence
