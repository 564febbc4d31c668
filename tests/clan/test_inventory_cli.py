"""The clan inventory follows VMs through the CLI: create, start, delete, inventory push/remove."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI, READY, Guest
from tests.nix_fixtures import needs_nix

CLAN = {
    "meta": {"name": "homelab", "description": "test clan"},
    "machines": {
        "router": {"name": "router", "tags": ["infra"], "deploy": {"targetHost": "root@router"}}
    },
    "instances": {
        "admin": {
            "module": {"name": "admin", "input": "clan-core"},
            "roles": {"default": {"tags": {"all": {}}}},
        }
    },
}


@pytest.fixture
def clan_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "clan"
    directory.mkdir()
    (directory / "inventory.json").write_text(json.dumps(CLAN, indent=2))
    return directory


def machines(clan_dir: Path) -> dict[str, dict[str, object]]:
    return json.loads((clan_dir / "inventory.json").read_text())["machines"]


def test_create_pushes_and_delete_removes(cli: CLI, clan_dir: Path) -> None:
    created = cli.ok(
        "create", "web", "--disk", "16", "--forward", "tcp:2201:22", "--clan-dir", str(clan_dir)
    )
    assert f"added 'web' to {clan_dir}/inventory.json" in created.err
    entry = machines(clan_dir)["web"]
    assert entry["tags"] == ["vm"] and entry["machineClass"] == "nixos"
    assert entry["deploy"] == {"targetHost": "root@127.0.0.1:2201"}
    data = json.loads((clan_dir / "inventory.json").read_text())
    assert data["meta"] == CLAN["meta"] and data["instances"] == CLAN["instances"]
    assert machines(clan_dir)["router"] == CLAN["machines"]["router"]

    cli.ok("delete", "web", "--force", "--clan-dir", str(clan_dir))
    assert json.loads((clan_dir / "inventory.json").read_text()) == CLAN


def test_only_a_clan_the_user_names_is_updated(cli: CLI, clan_dir: Path) -> None:
    cli.env["CLAN_DIR"] = str(clan_dir)
    created = cli.ok("create", "envvm", "--disk", "16")
    assert "envvm" in machines(clan_dir)
    # What that means to clan is said once, when the machine is added.
    assert "`clan machines update` now treats it as a machine to deploy" in created.err
    del cli.env["CLAN_DIR"]
    # A flake directory that holds an inventory.json is not thereby the clan to write to.
    (clan_dir / "flake.nix").write_text("{ outputs = _: { }; }\n")
    cli.ok("create", "flakevm", "--disk", "16", cwd=clan_dir)
    assert "flakevm" not in machines(clan_dir)
    # The inventory task names it by being run there.
    cli.ok("inventory", "push", "flakevm", cwd=clan_dir)
    assert "flakevm" in machines(clan_dir)
    cli.ok("create", "elsewhere", "--disk", "16")  # no clan known here: nothing is written
    assert "elsewhere" not in machines(clan_dir)


def test_entries_use_only_keys_clan_cores_inventory_module_knows(cli: CLI, clan_dir: Path) -> None:
    # modules/inventoryClass/inventory.nix of clan-core: any other key fails its evaluation.
    machine_keys = {"name", "description", "icon", "machineClass", "installedAt", "tags", "deploy"}
    deploy_keys = {"targetHost", "buildHost", "forwardAgent"}
    cli.ok("create", "web", "--disk", "16", "--forward", "tcp:2201:22", "--clan-dir", str(clan_dir))
    entry = machines(clan_dir)["web"]
    assert set(entry) <= machine_keys and set(entry["deploy"]) <= deploy_keys  # type: ignore[arg-type]


@needs_nix
def test_a_clan_in_the_nix_store_is_never_written(cli: CLI, tmp_path: Path) -> None:
    source = tmp_path / "clan"
    source.mkdir()
    (source / "inventory.json").write_text('{"machines": {}}\n')
    # A clan as a flake's store copy: read-only by design, whatever the file system says.
    added = subprocess.run(["nix-store", "--add", str(source)], capture_output=True, text=True)
    store_clan = Path(added.stdout.strip())
    created = cli.ok("create", "web", "--disk", "16", "--clan-dir", str(store_clan))
    assert "is in the Nix store (read-only): the clan inventory is not updated" in created.err
    pushed = cli.run("inventory", "push", "web", "--clan-dir", str(store_clan))
    assert pushed.code == 1 and "Nix store (read-only)" in pushed.err
    assert (store_clan / "inventory.json").read_text() == '{"machines": {}}\n'
    assert sorted(p.name for p in store_clan.iterdir()) == ["inventory.json"]  # no lock file


@pytest.mark.vm
def test_start_pushes_the_port_chosen_for_auto(cli: CLI, guest: Guest, clan_dir: Path) -> None:
    cli.create_guest("svc", guest, "--forward", "tcp:auto:22", "--clan-dir", str(clan_dir))
    assert "deploy" not in machines(clan_dir)["svc"]  # no port is known before the start
    cli.ok("start", "svc", "--wait-for", READY, "--clan-dir", str(clan_dir))
    forwards = json.loads(cli.ok("status", "svc", "--json").out)["forwards"]
    (forward,) = forwards
    port = int(forward.split(":")[2].split("->")[0])
    assert forward == f"tcp:127.0.0.1:{port}->22"
    assert machines(clan_dir)["svc"]["deploy"] == {"targetHost": f"root@127.0.0.1:{port}"}
    cli.ok("stop", "svc", "--force")


def test_explicit_push_with_tags_commit_and_foreign_entries(cli: CLI, clan_dir: Path) -> None:
    git = ["git", "-C", str(clan_dir)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "config", "user.email", "t@example.invalid"], check=True)
    subprocess.run([*git, "config", "user.name", "t"], check=True)
    subprocess.run([*git, "add", "inventory.json"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    cli.ok("create", "db", "--disk", "16")
    pushed = cli.ok(
        "inventory", "push", "db", "--clan-dir", str(clan_dir), "--tag", "database", "--commit"
    )
    assert "updated machine 'db'" in pushed.out
    assert machines(clan_dir)["db"]["tags"] == ["vm", "database"]
    log = subprocess.run(
        [*git, "log", "-1", "--format=%s", "--name-only"], capture_output=True, text=True
    )
    assert log.stdout.split() == ["inventory.json:", "add", "machine", "db", "inventory.json"]
    again = cli.ok("inventory", "push", "db", "--clan-dir", str(clan_dir), "--tag", "database")
    assert "unchanged" in again.out

    foreign = cli.run("inventory", "remove", "router", "--clan-dir", str(clan_dir))
    assert foreign.code == 1 and foreign.err.startswith("error: machine 'router'")
    assert "router" in machines(clan_dir)
    removed = cli.ok("inventory", "remove", "db", "--clan-dir", str(clan_dir), "--commit")
    assert "removed machine 'db'" in removed.out
    assert json.loads((clan_dir / "inventory.json").read_text()) == CLAN


def test_a_malformed_inventory_is_left_alone(cli: CLI, clan_dir: Path) -> None:
    broken = b'{"machines": [1, 2'
    (clan_dir / "inventory.json").write_bytes(broken)
    created = cli.ok("create", "vm1", "--disk", "16", "--clan-dir", str(clan_dir))
    assert "warning: the clan inventory was not updated" in created.err
    pushed = cli.run("inventory", "push", "vm1", "--clan-dir", str(clan_dir))
    assert (
        pushed.code == 1 and pushed.err.startswith("error:") and len(pushed.err.splitlines()) == 1
    )
    assert (clan_dir / "inventory.json").read_bytes() == broken
    bad = cli.run("inventory", "push", "vm1", "--clan-dir", str(clan_dir), "--tag", "two words")
    assert bad.code == 2 and bad.err.startswith("error: invalid tag")
    nowhere = cli.run("inventory", "push", "vm1")
    assert nowhere.code == 2 and "--clan-dir" in nowhere.err


def test_a_late_push_cannot_bring_back_a_deleted_vm(
    cli: CLI, clan_dir: Path, tmp_path: Path
) -> None:
    from clan_vm_tasks.clan import sync
    from clan_vm_tasks.state.store import Store

    cli.ok("create", "racer", "--disk", "16", "--clan-dir", str(clan_dir))
    assert "racer" in machines(clan_dir)
    cli.ok("delete", "racer", "--clan-dir", str(clan_dir))
    assert "racer" not in machines(clan_dir)
    # What a start that finished after the delete would do: push the VM it started.
    notices: list[str] = []
    sync.push(Store(cli.state_dir), "racer", clan_dir, notices.append)
    assert "racer" not in machines(clan_dir) and notices == []
