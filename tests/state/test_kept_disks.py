"""``kept-disks``: the disks delete kept are listed (VM, size on disk, when kept, path) and
removed by path or by age; a path that is not a kept disk is refused and left untouched."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CLI


def kept_by(cli: CLI, *names: str) -> dict[str, Path]:
    """Create and delete each VM NAME (its disk kept); the kept disk of each."""
    found = {}
    for name in names:
        cli.ok("create", name, "--disk", "16")
        # Something in the disk, so that its size on disk shows.
        disk = cli.state_dir / "vms" / name / "disk.qcow2"
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 0 3M", str(disk)],
            check=True,
            capture_output=True,
        )
        said = cli.ok("delete", name).out
        found[name] = Path(said.rsplit("kept at ", 1)[1].strip())
    return found


def listed(cli: CLI) -> list[dict[str, object]]:
    return json.loads(cli.ok("kept-disks", "--json").out)


def test_kept_disks_are_listed_and_removed_by_path(cli: CLI) -> None:
    assert "no kept disks" in cli.ok("kept-disks").out
    began = time.time()
    kept = kept_by(cli, "alpha", "beta")
    rows = listed(cli)
    assert [(r["vm"], r["path"]) for r in rows] == [
        ("alpha", str(kept["alpha"])),
        ("beta", str(kept["beta"])),
    ]
    for row in rows:
        assert 3 <= row["size_on_disk"] < 16  # type: ignore[operator]  # MiB, written ones
        when = time.mktime(time.strptime(str(row["kept_at"]), "%Y-%m-%dT%H:%M:%SZ"))
        assert abs(when - time.timezone - began) < 60  # UTC
    table = cli.ok("kept-disks").out.splitlines()
    assert table[0].split() == ["VM", "SIZE", "ON", "DISK", "KEPT", "PATH"]
    assert table[1].split()[0] == "alpha" and table[1].endswith(str(kept["alpha"]))

    removed = cli.ok("kept-disks", "--remove", str(kept["alpha"]))
    assert f"removed kept disk {kept['alpha']} (VM 'alpha'" in removed.out
    assert not kept["alpha"].exists() and kept["beta"].exists()
    assert [r["vm"] for r in listed(cli)] == ["beta"]
    events = json.loads(cli.ok("history", "--vm", "alpha", "--json").out)
    assert (events[0]["action"], events[0]["details"]) == ("remove-kept-disk", str(kept["alpha"]))
    # A path relative to the working directory names it as well.
    cli.ok("kept-disks", "--remove", f"kept-disks/{kept['beta'].name}", cwd=cli.state_dir)
    assert listed(cli) == []


def test_kept_disks_are_removed_by_age(cli: CLI) -> None:
    kept = kept_by(cli, "old", "new")
    # As if "old" had been deleted ten days ago: keep_disk's name says when.
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(time.time() - 10 * 86400))
    aged = kept["old"].with_name(f"old-{stamp}.qcow2")
    os.rename(kept["old"], aged)
    assert [r["vm"] for r in listed(cli)] == ["old", "new"]  # oldest first
    assert "no kept disks older than 11 days" in cli.ok("kept-disks", "--older-than", "11").out
    removed = json.loads(cli.ok("kept-disks", "--older-than", "9.5", "--json").out)
    assert [r["path"] for r in removed] == [str(aged)]
    assert not aged.exists() and kept["new"].exists()
    cli.ok("kept-disks", "--older-than", "0")  # all of them
    assert listed(cli) == []


@pytest.mark.parametrize(
    ("what", "words"),
    [
        ("outside", "only files in"),
        ("vm-disk", "only files in"),
        ("dotdot", "a path with '..' is not taken"),
        ("symlink", "it is a symbolic link"),
        ("directory", "not a disk image the tool kept there"),
        ("other-file", "not a disk image the tool kept there"),
        ("missing", "no such file"),
        ("symlinked-dir", "only files in"),
    ],
)
def test_a_path_that_is_not_a_kept_disk_is_refused_and_untouched(
    cli: CLI, tmp_path: Path, what: str, words: str
) -> None:
    kept = kept_by(cli, "keep")["keep"]
    cli.ok("create", "live", "--disk", "16")
    directory = kept.parent
    outside = tmp_path / "precious.qcow2"
    outside.write_text("precious")
    paths = {
        "outside": outside,
        "vm-disk": cli.state_dir / "vms" / "live" / "disk.qcow2",
        "dotdot": Path(f"{directory}/../kept-disks/{kept.name}"),
        "symlink": directory / "evil-20200101T000000.qcow2",
        "directory": directory / "sub-20200101T000000.qcow2",
        "other-file": directory / "notes.txt",
        "missing": directory / "gone-20200101T000000.qcow2",
        "symlinked-dir": tmp_path / "link-to-kept" / kept.name,
    }
    (directory / "evil-20200101T000000.qcow2").symlink_to(outside)
    (directory / "sub-20200101T000000.qcow2").mkdir()
    (directory / "notes.txt").write_text("mine")
    (tmp_path / "link-to-kept").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / kept.name).write_text("not a kept disk")

    def everything() -> dict[str, bytes | str]:
        found: dict[str, bytes | str] = {}
        for root in (cli.state_dir, tmp_path):
            for path in sorted(root.rglob("*")):
                if path.is_symlink():
                    found[str(path)] = f"-> {os.readlink(path)}"
                elif path.is_file():
                    found[str(path)] = path.read_bytes()
        return found

    before = everything()
    result = cli.run("kept-disks", "--remove", str(kept), "--remove", str(paths[what]))
    assert result.code == 2, result
    assert result.err.count("\n") == 1 and result.err.startswith("error: ") and words in result.err
    # Nothing was removed, not even the kept disk named first.
    assert everything() == before
