"""A VM remembers the clans it was added to: ``delete`` takes its machine entry out of them
without the clan being named again, also when the delete was killed halfway."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CLI


def clan(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "inventory.json").write_text('{\n  "machines": {}\n}\n')
    return directory


def machines(directory: Path) -> dict[str, object]:
    return json.loads((directory / "inventory.json").read_text())["machines"]


def test_delete_takes_the_vm_out_of_every_clan_it_was_added_to(cli: CLI, tmp_path: Path) -> None:
    home, lab = clan(tmp_path / "home"), clan(tmp_path / "lab")
    # Named relatively at create: remembered as the directory it is.
    cli.ok("create", "web", "--disk", "16", "--clan-dir", "home", cwd=tmp_path)
    cli.ok("inventory", "push", "web", "--clan-dir", str(lab))
    assert "web" in machines(home) and "web" in machines(lab)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    deleted = cli.ok("delete", "web", cwd=elsewhere)
    assert f"removed 'web' from {home}/inventory.json" in deleted.err
    assert f"removed 'web' from {lab}/inventory.json" in deleted.err
    assert machines(home) == {} and machines(lab) == {}
    # Nothing is left to finish: a later command does not even load the clan code.
    probe = (
        "import sys\n"
        "from clan_vm_tasks.cli import main\n"
        "try:\n"
        "    main(['clan-vm-manager', 'list'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], env=cli.env, capture_output=True, text=True, check=True
    ).stderr.split()
    assert "clan_vm_tasks.cli" in loaded and "clan_vm_tasks.clan.sync" not in loaded


def test_a_clan_directory_that_is_gone_is_a_warning(cli: CLI, tmp_path: Path) -> None:
    home = clan(tmp_path / "home")
    cli.ok("create", "web", "--disk", "16", "--clan-dir", str(home))
    shutil.rmtree(home)
    deleted = cli.ok("delete", "web", "--force")
    assert deleted.out.startswith("deleted VM 'web'")
    assert deleted.err.strip() == (
        f"warning: the clan directory {home} that 'web' was added to is gone; no inventory "
        "to take it out of"
    )


def test_inventory_remove_forgets_the_clan(cli: CLI, tmp_path: Path) -> None:
    home = clan(tmp_path / "home")
    cli.ok("create", "web", "--disk", "16", "--clan-dir", str(home))
    cli.ok("inventory", "remove", "web", "--clan-dir", str(home))
    # Someone else's machine of that name, added later, is not ours to take out.
    theirs = {"machines": {"web": {"name": "web", "tags": ["server"]}}}
    (home / "inventory.json").write_text(json.dumps(theirs))
    deleted = cli.ok("delete", "web", "--force")
    assert "inventory" not in deleted.err and "warning" not in deleted.err
    assert machines(home) == theirs["machines"]


def test_a_vm_not_in_a_clan_deletes_quietly(cli: CLI) -> None:
    cli.ok("create", "solo", "--disk", "16")
    deleted = cli.ok("delete", "solo", "--force")
    assert deleted.err == "" and not (cli.state_dir / "unlisting").exists()


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_delete_killed_before_it_took_the_entry_out_is_finished_by_the_next_command(
    cli: CLI, tmp_path: Path
) -> None:
    home = clan(tmp_path / "home")
    cli.ok("create", "web", "--disk", "16", "--clan-dir", str(home))
    # Killed at its history line: the VM is renamed away, the inventory not yet updated.
    history = cli.state_dir / "history.jsonl"
    argv = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(history), "-e", "trace=write"]
    argv += ["-e", "inject=write:signal=SIGKILL:when=1", "--", *cli.command(), "delete", "web"]
    killed = subprocess.run(argv, env=cli.env, capture_output=True, text=True, check=False)
    assert killed.returncode == 128 + 9 or killed.returncode < 0, killed
    assert "web" in machines(home)
    listed = cli.ok("list", "--json")  # any command finishes it
    assert json.loads(listed.out) == []
    assert f"removed 'web' from {home}/inventory.json" in listed.err
    assert machines(home) == {}
    assert list((cli.state_dir / "unlisting").iterdir()) == []
    assert [p.name.startswith("web-") for p in (cli.state_dir / "kept-disks").iterdir()] == [True]


def test_set_of_a_stopped_vm_updates_its_entry(cli: CLI, tmp_path: Path) -> None:
    home = clan(tmp_path / "home")
    cli.ok("create", "web", "--disk", "16", "--forward", "tcp:2201:22", "--clan-dir", str(home))
    cli.ok("set", "web", "--no-forward", "2201", "--forward", "tcp:2202:22")
    assert machines(home)["web"]["deploy"] == {"targetHost": "root@127.0.0.1:2202"}  # type: ignore[index]
