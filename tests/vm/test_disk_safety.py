"""Nothing lost on delete, resize and revert; base images are checked before a disk is laid
over them (they may not reach other files, nor lie in the state directory)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI, Guest
from tests.vmhelpers import disk_of, history_actions


def qemu_io(image: Path, command: str, fmt: str = "qcow2") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", fmt, "-c", command, str(image)],
        capture_output=True,
        text=True,
        check=False,
    )


def marker(number: int) -> str:
    return f"0x{0x10 + number:02x}"


def recorded_size(cli: CLI, name: str) -> int:
    size: int = json.loads(cli.ok("show", name, "--json").out)["config"]["disk_size"]
    return size


def test_deletes_of_one_name_in_one_second_keep_every_disk(cli: CLI) -> None:
    for number in range(4):
        cli.ok("create", "churn", "--disk", "16")
        assert qemu_io(disk_of(cli, "churn"), f"write -P {marker(number)} 0 64k").returncode == 0
        cli.ok("delete", "churn")
    kept = sorted((cli.state_dir / "kept-disks").iterdir())
    assert len(kept) == 4, kept
    patterns = set()
    for disk in kept:
        for number in range(4):
            if qemu_io(disk, f"read -P {marker(number)} 0 64k").returncode == 0:
                patterns.add(number)
    assert patterns == {0, 1, 2, 3}  # four distinct disks, none overwritten
    assert history_actions(cli, "churn").count("delete") == 4


def test_a_base_image_in_the_state_directory_is_refused(cli: CLI, guest: Guest) -> None:
    cli.create_guest("owner", guest)
    cli.ok("create", "gone", "--disk", "16")
    cli.ok("delete", "gone")
    kept = next((cli.state_dir / "kept-disks").iterdir())
    for base in (disk_of(cli, "owner"), kept):
        result = cli.run("create", "thief", "--from-image", str(base))
        assert result.code == 2, result
        assert "inside the state directory" in result.err
    assert not (cli.state_dir / "vms" / "thief").exists()


@pytest.mark.parametrize("target_format", ["raw", "qcow2"])
def test_a_base_image_that_reaches_another_file_is_refused(
    cli: CLI, tmp_path: Path, target_format: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:$6$hash:19000:0:99999:7:::\n" * 100)
    if target_format == "qcow2":
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(secret), "1M"], check=True)
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", target_format,
         str(evil), "1M"],
        check=True,
    )  # fmt: skip
    result = cli.run("create", "victim", "--from-image", str(evil))
    assert result.code == 2 and "refers to another file" in result.err, result
    assert str(secret) in result.err
    assert not (cli.state_dir / "vms" / "victim").exists()


def test_a_base_image_of_another_format_is_refused(cli: CLI, tmp_path: Path) -> None:
    descriptor = tmp_path / "disk.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\nRW 2048 FLAT "/etc/hostname" 0\n'
    )
    result = cli.run("create", "victim", "--from-image", str(descriptor))
    assert result.code == 2 and "use a qcow2 or raw image" in result.err, result


def test_a_self_contained_raw_base_works_and_is_opened_as_raw(cli: CLI, tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(base), "8M"], check=True)
    cli.ok("create", "layered", "--from-image", str(base))
    disk = json.loads(cli.ok("show", "layered", "--json").out)["disks"][0]
    assert disk["backing_file"] == str(base) and disk["backing_format"] == "raw"


def test_reverting_to_a_snapshot_older_than_a_resize_restores_the_recorded_size(
    cli: CLI,
) -> None:
    cli.ok("create", "elastic", "--disk", "16")
    cli.ok("snapshot", "elastic", "small")
    cli.ok("resize", "elastic", "--disk", "48")
    assert recorded_size(cli, "elastic") == 48
    cli.ok("revert", "elastic", "small")
    disk = json.loads(cli.ok("show", "elastic", "--json").out)["disks"][0]
    assert disk["virtual_size"] == 16
    assert recorded_size(cli, "elastic") == 16
    listed = json.loads(cli.ok("list", "--json").out)[0]
    assert listed["disk_size"] == 16
    cli.ok("resize", "elastic", "--disk", "32")  # grows again from the true size
    assert recorded_size(cli, "elastic") == 32
