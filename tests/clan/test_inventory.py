"""Tests for clan_vm_tasks.inventory against real files, real processes and real git."""

import copy
import fcntl
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clan_vm_tasks.clan.inventory import (
    DESCRIPTION,
    LOCK_FILE,
    InventoryError,
    find_clan_dir,
    push,
    remove,
)
from tests.conftest import as_nobody

INV = "inventory.json"
OLD_NS = 1_000_000_000  # a pinned mtime: any rewrite would move it

# Shaped like a real clan: meta first and machines second so appending elsewhere would show.
CLAN: dict[str, Any] = {
    "meta": {"name": "homelab", "description": "Café ☕ home infrastructure"},
    "machines": {
        "jon": {
            "name": "jon",
            "description": "Main desktop",
            "icon": "./icons/jon.svg",
            "machineClass": "nixos",
            "installedAt": 1717420800,
            "tags": ["desktop", "backup"],
            "deploy": {"targetHost": "root@jon.lan", "buildHost": "", "forwardAgent": False},
        },
        "sara": {
            "name": "sara",
            "machineClass": "darwin",
            "tags": ["laptop"],
            "deploy": {"targetHost": "sara@192.168.1.22"},
        },
        "web": {
            "name": "web",
            "tags": ["server"],
            "deploy": {"targetHost": "root@web.example.org"},
        },
        # Ours, already up to date; key order deliberately unusual.
        "ci-runner": {
            "icon": "./icons/vm.svg",
            "name": "ci-runner",
            "installedAt": 1720000000,
            "description": DESCRIPTION,
            "machineClass": "nixos",
            "tags": ["vm", "web", "ci"],
            "deploy": {
                "buildHost": "root@builder.lan",
                "targetHost": "root@127.0.0.1:2201",
                "forwardAgent": True,
            },
        },
    },
    "instances": {
        "admin": {
            "module": {"name": "admin", "input": "clan-core"},
            "roles": {
                "default": {
                    "tags": {"all": {}},
                    "settings": {
                        "allowedKeys": {"alice": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG alice@x"}
                    },
                }
            },
        },
        "borgbackup": {
            "module": {"name": "borgbackup", "input": "clan-core"},
            "roles": {"client": {"tags": {"backup": {}}}, "server": {"machines": {"jon": {}}}},
        },
        "zerotier": {
            "module": {"name": "zerotier", "input": "clan-core"},
            "roles": {"controller": {"machines": {"jon": {}}}, "peer": {"tags": {"all": {}}}},
        },
    },
    "tags": {"backup": {"description": "machines with backups"}},
    "x-other-tool": {"lastSync": "2024-05-01T12:00:00Z", "order": [3, {"b": 2, "a": 1}]},
}


def clan_text(data: dict[str, Any]) -> str:
    """What clan-cli writes: json.dump(data, f, indent=2), no trailing newline."""
    return json.dumps(data, indent=2)


def key_order(value: Any) -> Any:
    """Nested key order, so two equal dicts can also be compared for ordering."""
    if isinstance(value, dict):
        return [(k, key_order(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [key_order(v) for v in value]
    return value


def section(key: str, value: Any, depth: int) -> str:
    """The exact text a key/value occupies in an indent=2 file at the given nesting depth."""
    pad = "  " * depth
    return f"\n{pad}{json.dumps(key)}: " + json.dumps(value, indent=2).replace("\n", "\n" + pad)


def read(clan: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((clan / INV).read_text())
    return data


def fingerprint(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_ino


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def pin_mtime(path: Path) -> None:
    os.utime(path, ns=(OLD_NS, OLD_NS))


@pytest.fixture
def clan(tmp_path: Path) -> Path:
    directory = tmp_path / "clan"
    directory.mkdir()
    (directory / INV).write_text(clan_text(CLAN))
    return directory


# --- push ----------------------------------------------------------------------------------


def test_push_new_machine_leaves_everything_else_identical(clan: Path) -> None:
    old_text = (clan / INV).read_text()

    assert push(clan, "dev-vm", ssh_port=2222, tags=["dev"]) is True

    new_text = (clan / INV).read_text()
    new = read(clan)
    assert list(new["machines"])[-1] == "dev-vm"  # appended at the end
    rest = copy.deepcopy(new)
    del rest["machines"]["dev-vm"]
    assert rest == CLAN
    assert key_order(rest) == key_order(CLAN)
    # Untouched sections keep their exact serialized text.
    for key in ("meta", "instances", "tags", "x-other-tool"):
        assert section(key, CLAN[key], 1) in old_text
        assert section(key, CLAN[key], 1) in new_text
    for name, entry in CLAN["machines"].items():
        assert section(name, entry, 2) in new_text
    # Whole file is clan's layout; the atomic write leaves no temp files behind.
    assert new_text == clan_text(new)
    assert listing(clan) == sorted([INV, LOCK_FILE])


def test_push_new_machine_entry_content(clan: Path) -> None:
    push(clan, "dev-vm", ssh_port=2222, tags=["dev", "vm", "dev", "gpu"])

    entry = read(clan)["machines"]["dev-vm"]
    assert key_order(entry) == key_order(
        {
            "name": "dev-vm",
            "description": "QEMU VM managed by clan-vm-tasks",
            "machineClass": "nixos",
            "tags": ["vm", "dev", "gpu"],
            "deploy": {"targetHost": "root@127.0.0.1:2222"},
        }
    )


def test_push_without_port_writes_no_deploy(clan: Path) -> None:
    push(clan, "dev-vm", ssh_port=None)
    assert "deploy" not in read(clan)["machines"]["dev-vm"]


def test_second_identical_push_does_not_touch_the_file(clan: Path) -> None:
    assert push(clan, "dev-vm", ssh_port=2222, tags=["dev"]) is True
    pin_mtime(clan / INV)
    before = fingerprint(clan / INV)

    assert push(clan, "dev-vm", ssh_port=2222, tags=["dev"]) is False
    assert push(clan, "dev-vm", ssh_port=2222) is False  # existing tags are kept anyway
    assert fingerprint(clan / INV) == before
    assert before[1] == OLD_NS


def test_up_to_date_entry_of_ours_is_a_noop(clan: Path) -> None:
    pin_mtime(clan / INV)
    before = fingerprint(clan / INV)
    assert push(clan, "ci-runner", ssh_port=None, tags=["ci"]) is False
    assert push(clan, "ci-runner", ssh_port=2201) is False
    assert fingerprint(clan / INV) == before


def test_new_port_updates_target_host_and_keeps_everything_else(clan: Path) -> None:
    assert push(clan, "ci-runner", ssh_port=2299) is True

    entry = read(clan)["machines"]["ci-runner"]
    expected = copy.deepcopy(CLAN["machines"]["ci-runner"])
    expected["deploy"]["targetHost"] = "root@127.0.0.1:2299"
    assert entry == expected
    assert key_order(entry) == key_order(expected)  # buildHost stays first, icon stays first


def test_no_port_keeps_existing_target_host(clan: Path) -> None:
    push(clan, "ci-runner", ssh_port=None, tags=["gpu"])
    entry = read(clan)["machines"]["ci-runner"]
    assert entry["deploy"] == CLAN["machines"]["ci-runner"]["deploy"]
    assert entry["tags"] == ["vm", "web", "ci", "gpu"]


def test_tags_merged_with_vm_first_and_stale_fields_refreshed(clan: Path) -> None:
    data = copy.deepcopy(CLAN)
    entry = data["machines"]["ci-runner"]
    entry["tags"] = ["ci", "vm", "web"]
    entry["description"] = "something older"
    del entry["deploy"]
    (clan / INV).write_text(clan_text(data))

    assert push(clan, "ci-runner", ssh_port=2202, tags=["db", "web", "db"]) is True

    new = read(clan)["machines"]["ci-runner"]
    assert new["tags"] == ["vm", "ci", "web", "db"]
    assert new["description"] == DESCRIPTION
    assert new["icon"] == "./icons/vm.svg"
    assert new["installedAt"] == 1720000000
    assert list(new) == [*list(entry), "deploy"]  # existing keys keep place, deploy appended
    assert new["deploy"] == {"targetHost": "root@127.0.0.1:2202"}


def test_push_refuses_foreign_entry_and_leaves_file(clan: Path) -> None:
    pin_mtime(clan / INV)
    before = fingerprint(clan / INV)

    with pytest.raises(InventoryError) as excinfo:
        push(clan, "web", ssh_port=2222)

    assert str(excinfo.value) == (
        f"machine 'web' in {clan / INV} is not managed by clan-vm-tasks (no 'vm' tag);"
        " use --force to take it over"
    )
    assert fingerprint(clan / INV) == before


def test_push_force_takes_over_foreign_entry_in_place(clan: Path) -> None:
    assert push(clan, "web", ssh_port=2230, tags=["srv"], force=True) is True

    new = read(clan)
    assert list(new["machines"]) == list(CLAN["machines"])  # position of "web" unchanged
    assert new["machines"]["web"] == {
        "name": "web",
        "description": DESCRIPTION,
        "machineClass": "nixos",
        "tags": ["vm", "srv"],  # the foreign tags (service roles) are not inherited
        "deploy": {"targetHost": "root@127.0.0.1:2230"},
    }
    new["machines"]["web"] = CLAN["machines"]["web"]
    assert new == CLAN
    # Ours now: a later push without force is accepted.
    assert push(clan, "web", ssh_port=2231) is True


def test_missing_inventory_is_created_with_only_machines(tmp_path: Path) -> None:
    assert push(tmp_path, "dev-vm", ssh_port=2222) is True

    text = (tmp_path / INV).read_text()
    data = json.loads(text)
    assert list(data) == ["machines"]
    assert list(data["machines"]) == ["dev-vm"]
    assert text == clan_text(data) + "\n"  # 2-space indent, and a new file ends with a newline


def test_new_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        push(tmp_path, "dev-vm", ssh_port=2222)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / INV).stat().st_mode) == 0o640


def test_existing_permission_bits_are_preserved(clan: Path) -> None:
    (clan / INV).chmod(0o664)
    ino = (clan / INV).stat().st_ino
    old = os.umask(0o077)  # must not narrow the existing mode
    try:
        push(clan, "dev-vm", ssh_port=2222)
    finally:
        os.umask(old)
    st = (clan / INV).stat()
    assert st.st_ino != ino  # really replaced via a new file
    assert stat.S_IMODE(st.st_mode) == 0o664


def test_foreign_layout_is_rewritten_in_clan_layout_keeping_trailing_newline(
    clan: Path,
) -> None:
    (clan / INV).write_text(json.dumps(CLAN, indent=4, ensure_ascii=False) + "\n")

    assert push(clan, "dev-vm", ssh_port=2222) is True

    new = read(clan)
    assert (clan / INV).read_text() == clan_text(new) + "\n"
    assert "Caf\\u00e9" in (clan / INV).read_text()  # ensure_ascii like clan-cli
    del new["machines"]["dev-vm"]
    assert key_order(new) == key_order(CLAN)


def test_noop_push_does_not_reformat_a_hand_formatted_file(clan: Path) -> None:
    data = copy.deepcopy(CLAN)
    data["machines"]["dev-vm"] = {
        "name": "dev-vm",
        "description": DESCRIPTION,
        "machineClass": "nixos",
        "tags": ["vm"],
        "deploy": {"targetHost": "root@127.0.0.1:2222"},
    }
    (clan / INV).write_text(json.dumps(data, indent=4, ensure_ascii=False) + "\n")
    pin_mtime(clan / INV)
    before = fingerprint(clan / INV)

    assert push(clan, "dev-vm", ssh_port=2222) is False
    assert fingerprint(clan / INV) == before


def test_symlinked_inventory_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / INV).write_text(clan_text(CLAN))
    clan_dir = tmp_path / "clan"
    clan_dir.mkdir()
    (clan_dir / INV).symlink_to(real / INV)

    push(clan_dir, "dev-vm", ssh_port=2222)

    assert (clan_dir / INV).is_symlink()
    assert "dev-vm" in json.loads((real / INV).read_text())["machines"]


def test_missing_clan_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="does not exist"):
        push(tmp_path / "nope", "dev-vm", ssh_port=2222)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-vm",
        "vm-",
        "_x",
        "my_vm",
        "dev vm",
        "dev/vm",
        "dev.vm",
        "x" * 64,
        "ümlaut",
        "dev\n",
        None,
    ],
)
def test_invalid_machine_names_are_rejected(tmp_path: Path, name: Any) -> None:
    with pytest.raises(InventoryError, match="invalid machine name"):
        push(tmp_path, name, ssh_port=2222)
    with pytest.raises(InventoryError, match="invalid machine name"):
        remove(tmp_path, name)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("name", ["a", "web-01-B", "9lives", "x" * 63])
def test_valid_machine_names_are_accepted(tmp_path: Path, name: str) -> None:
    assert push(tmp_path, name, ssh_port=None) is True
    assert list(read(tmp_path)["machines"]) == [name]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tags": [""]}, "invalid tag"),
        ({"tags": ["two words"]}, "invalid tag"),
        ({"tags": ["tab\t"]}, "invalid tag"),
        ({"tags": [3]}, "invalid tag"),
        ({"tags": "dev"}, "not the string"),
        ({"ssh_port": 0}, "invalid ssh port"),
        ({"ssh_port": 65536}, "invalid ssh port"),
        ({"ssh_port": True}, "invalid ssh port"),
    ],
)
def test_invalid_tags_and_ports_are_rejected(
    tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    args: dict[str, Any] = {"ssh_port": 2222, **kwargs}
    with pytest.raises(InventoryError, match=match):
        push(tmp_path, "dev-vm", **args)
    assert listing(tmp_path) == []


# --- malformed files -----------------------------------------------------------------------

MALFORMED = {
    "invalid-json": (
        b'{\n  "machines": {\n    "jon": ,\n  }\n}',
        "is not valid JSON: line 3 column 12: Expecting value",
    ),
    "top-level-list": (b'[{"machines": {}}]', "must contain a JSON object, not a list"),
    "machines-list": (b'{"machines": ["dev-vm"]}', "'machines' must be an object, not a list"),
    "entry-string": (
        b'{"machines": {"jon": "root@jon"}}',
        "machine 'jon' must be an object, not a string",
    ),
    "duplicate-key": (b'{"machines": {}, "meta": {}, "machines": {}}', "key 'machines' twice"),
    "tags-string": (b'{"machines": {"dev-vm": {"tags": "vm"}}}', "'tags' must be a list"),
    "not-utf8": (b'{"meta": {"name": "\xff"}}', "is not valid UTF-8"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_inventory_raises_and_is_left_untouched(clan: Path, case: str) -> None:
    content, message = MALFORMED[case]
    (clan / INV).write_bytes(content)
    pin_mtime(clan / INV)
    before = fingerprint(clan / INV)

    actions: list[Callable[[], bool]] = [
        lambda: push(clan, "dev-vm", ssh_port=2222),
        lambda: push(clan, "dev-vm", ssh_port=2222, force=True),
        lambda: remove(clan, "dev-vm", force=case != "tags-string"),
    ]
    for action in actions:
        with pytest.raises(InventoryError) as excinfo:
            action()
        assert message in str(excinfo.value)
        assert "\n" not in str(excinfo.value)

    assert fingerprint(clan / INV) == before
    assert listing(clan) == sorted([INV, LOCK_FILE])


def test_invalid_json_message_names_the_file(clan: Path) -> None:
    (clan / INV).write_bytes(MALFORMED["invalid-json"][0])
    with pytest.raises(InventoryError) as excinfo:
        push(clan, "dev-vm", ssh_port=2222)
    assert str(excinfo.value) == (
        f"inventory.json at {clan / INV} is not valid JSON: line 3 column 12: Expecting value"
    )


# --- remove --------------------------------------------------------------------------------


def test_remove_our_machine(clan: Path) -> None:
    assert remove(clan, "ci-runner") is True

    new = read(clan)
    expected = copy.deepcopy(CLAN)
    del expected["machines"]["ci-runner"]
    assert new == expected
    assert key_order(new) == key_order(expected)
    assert (clan / INV).read_text() == clan_text(expected)


def test_remove_refuses_foreign_machine_unless_forced(clan: Path) -> None:
    pin_mtime(clan / INV)
    before = fingerprint(clan / INV)
    with pytest.raises(InventoryError, match=r"machine 'jon' .* not managed by clan-vm-tasks"):
        remove(clan, "jon")
    assert fingerprint(clan / INV) == before

    assert remove(clan, "jon", force=True) is True
    assert list(read(clan)["machines"]) == ["sara", "web", "ci-runner"]


def test_remove_missing_entry_is_a_noop(clan: Path) -> None:
    pin_mtime(clan / INV)
    before = fingerprint(clan / INV)
    assert remove(clan, "dev-vm") is False
    assert remove(clan, "dev-vm", force=True) is False
    assert fingerprint(clan / INV) == before


def test_remove_without_machines_key_is_a_noop(clan: Path) -> None:
    (clan / INV).write_text(clan_text({"meta": {"name": "x"}}))
    before = fingerprint(clan / INV)
    assert remove(clan, "dev-vm") is False
    assert fingerprint(clan / INV) == before


def test_remove_missing_file_creates_nothing(tmp_path: Path) -> None:
    assert remove(tmp_path, "dev-vm") is False
    assert listing(tmp_path) == []


def test_push_then_remove_restores_the_original_bytes(clan: Path) -> None:
    original = (clan / INV).read_bytes()
    push(clan, "dev-vm", ssh_port=2222, tags=["dev"])
    assert remove(clan, "dev-vm") is True
    assert (clan / INV).read_bytes() == original


# --- locking -------------------------------------------------------------------------------


def _push_after_barrier(barrier: Any, clan_dir: str, name: str, port: int) -> None:
    barrier.wait()
    push(Path(clan_dir), name, ssh_port=port, tags=["race"])


def test_concurrent_pushes_from_separate_processes_all_land(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for attempt in range(4):
        clan_dir = tmp_path / f"clan{attempt}"
        clan_dir.mkdir()
        (clan_dir / INV).write_text(clan_text(CLAN))
        names = [f"vm-{attempt}-{i}" for i in range(6)]
        barrier = ctx.Barrier(len(names))
        procs = [
            ctx.Process(target=_push_after_barrier, args=(barrier, str(clan_dir), name, 2300 + i))
            for i, name in enumerate(names)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=20)
            if proc.is_alive():
                proc.kill()
        assert [proc.exitcode for proc in procs] == [0] * len(names)

        new = read(clan_dir)
        assert sorted(list(new["machines"])[-len(names) :]) == sorted(names), f"attempt {attempt}"
        for name in names:
            del new["machines"][name]
        assert key_order(new) == key_order(CLAN)


def _push_after_event(event: Any, clan_dir: Path) -> None:
    event.wait()
    push(clan_dir, "dev-vm", ssh_port=2222)


def test_push_waits_for_the_lock_file(clan: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    before = (clan / INV).read_bytes()
    start = ctx.Event()
    # Forked before the lock is opened: an inherited descriptor would share our flock.
    proc = ctx.Process(target=_push_after_event, args=(start, clan))
    proc.start()
    with (clan / LOCK_FILE).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        start.set()
        time.sleep(0.3)
        assert proc.is_alive()
        assert (clan / INV).read_bytes() == before
    proc.join(timeout=10)  # closing the file released the lock
    if proc.is_alive():
        proc.kill()
    assert proc.exitcode == 0
    assert "dev-vm" in read(clan)["machines"]


# --- git -----------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    )
    return result.stdout


@pytest.fixture
def git_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Keep the developer's git config, hooks and surrounding repos out of the tests.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "CLAN_NO_COMMIT"):
        monkeypatch.delenv(var, raising=False)


def init_repo(repo: Path) -> None:
    repo.mkdir(exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Test User")
    git(repo, "config", "user.email", "test@example.org")


@pytest.fixture
def repo(clan: Path, git_env: None) -> Path:
    init_repo(clan)
    (clan / "flake.nix").write_text("{ outputs = _: { }; }\n")
    git(clan, "add", "flake.nix", INV)
    git(clan, "commit", "-q", "-m", "init")
    return clan


def commits(repo: Path) -> list[str]:
    return git(repo, "log", "--format=%s").splitlines()


def committed_files(repo: Path, rev: str = "HEAD") -> list[str]:
    return git(repo, "show", "--name-only", "--format=", rev).split()


def test_commit_adds_only_inventory_and_keeps_other_staged_changes(repo: Path) -> None:
    (repo / "flake.nix").write_text("{ outputs = _: { hello = 1; }; }\n")
    git(repo, "add", "flake.nix")
    (repo / "notes.txt").write_text("untracked\n")

    assert push(repo, "dev-vm", ssh_port=2222, commit=True) is True

    assert commits(repo) == ["inventory.json: add machine dev-vm", "init"]
    assert committed_files(repo) == [INV]
    assert git(repo, "show", f"HEAD:{INV}") == (repo / INV).read_text()
    assert git(repo, "diff", "--cached", "--name-only").split() == ["flake.nix"]
    status = git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert sorted(status) == sorted([f"?? {LOCK_FILE}", "M  flake.nix", "?? notes.txt"])


def test_commit_messages_for_update_noop_and_remove(repo: Path) -> None:
    push(repo, "dev-vm", ssh_port=2222, commit=True)
    assert push(repo, "dev-vm", ssh_port=2223, commit=True) is True
    assert push(repo, "dev-vm", ssh_port=2223, commit=True) is False
    assert remove(repo, "dev-vm", commit=True) is True
    assert remove(repo, "dev-vm", commit=True) is False
    assert push(repo, "web", ssh_port=2224, force=True, commit=True) is True

    assert commits(repo) == [
        "inventory.json: update machine web",
        "inventory.json: remove machine dev-vm",
        "inventory.json: update machine dev-vm",
        "inventory.json: add machine dev-vm",
        "init",
    ]
    for rev in ("HEAD", "HEAD~1", "HEAD~2", "HEAD~3"):
        assert committed_files(repo, rev) == [INV]
    assert git(repo, "status", "--porcelain", "--", INV) == ""


def test_commit_of_a_new_inventory_file(tmp_path: Path, git_env: None) -> None:
    repo = tmp_path / "clan"
    init_repo(repo)
    (repo / "flake.nix").write_text("{ }\n")
    git(repo, "add", "flake.nix")
    git(repo, "commit", "-q", "-m", "init")
    (repo / "README.md").write_text("hi\n")
    git(repo, "add", "README.md")

    assert push(repo, "dev-vm", ssh_port=2222, commit=True) is True

    assert commits(repo) == ["inventory.json: add machine dev-vm", "init"]
    assert committed_files(repo) == [INV]
    assert git(repo, "diff", "--cached", "--name-only").split() == ["README.md"]
    assert git(repo, "ls-tree", "-r", "--name-only", "HEAD").split() == ["flake.nix", INV]


def test_commit_in_a_repo_without_commits(tmp_path: Path, git_env: None) -> None:
    repo = tmp_path / "clan"
    init_repo(repo)
    (repo / "flake.nix").write_text("{ }\n")
    git(repo, "add", "flake.nix")

    assert push(repo, "dev-vm", ssh_port=2222, commit=True) is True

    assert commits(repo) == ["inventory.json: add machine dev-vm"]
    assert committed_files(repo) == [INV]
    assert git(repo, "diff", "--cached", "--name-only").split() == ["flake.nix"]


def test_clan_dir_in_a_subdirectory_of_the_repo(tmp_path: Path, git_env: None) -> None:
    repo = tmp_path / "repo"
    init_repo(repo)
    (repo / "clan").mkdir()
    (repo / "clan" / INV).write_text(clan_text(CLAN))
    (repo / INV).write_text("{}")  # a decoy at the repo root must not be committed
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "init")

    push(repo / "clan", "dev-vm", ssh_port=2222, commit=True)

    assert committed_files(repo) == [f"clan/{INV}"]


def test_no_commit_when_file_returns_to_committed_content(repo: Path) -> None:
    push(repo, "dev-vm", ssh_port=2222)  # uncommitted
    assert remove(repo, "dev-vm", commit=True) is True
    assert commits(repo) == ["init"]
    assert git(repo, "status", "--porcelain", "--", INV) == ""


def test_clan_no_commit_only_registers_the_file(
    tmp_path: Path, git_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "clan"
    init_repo(repo)
    (repo / "flake.nix").write_text("{ }\n")
    git(repo, "add", "flake.nix")
    git(repo, "commit", "-q", "-m", "init")
    monkeypatch.setenv("CLAN_NO_COMMIT", "1")

    assert push(repo, "dev-vm", ssh_port=2222, commit=True) is True

    assert commits(repo) == ["init"]
    assert git(repo, "status", "--porcelain", "--", INV) == f" A {INV}\n"  # intent-to-add


def test_commit_outside_git_fails_before_writing(clan: Path, git_env: None) -> None:
    before = fingerprint(clan / INV)
    with pytest.raises(InventoryError) as excinfo:
        push(clan, "dev-vm", ssh_port=2222, commit=True)
    assert "not a git repository" in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    assert fingerprint(clan / INV) == before


def test_commit_without_git_installed(
    clan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    before = fingerprint(clan / INV)
    with pytest.raises(InventoryError, match="git is not installed"):
        push(clan, "dev-vm", ssh_port=2222, commit=True)
    assert fingerprint(clan / INV) == before
    assert push(clan, "dev-vm", ssh_port=2222) is True  # git is only needed to commit


def write_hook(repo: Path, hook: str, body: str) -> None:
    path = repo / ".git" / "hooks" / hook
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_failing_hook_is_reported_with_its_last_line(repo: Path) -> None:
    write_hook(
        repo, "prepare-commit-msg", 'echo "first line" >&2\necho "hook says no" >&2\nexit 1\n'
    )

    with pytest.raises(InventoryError) as excinfo:
        push(repo, "dev-vm", ssh_port=2222, commit=True)

    message = str(excinfo.value)
    assert message.startswith("git commit of inventory.json in ")
    assert message.endswith(": hook says no")
    assert commits(repo) == ["init"]
    assert "dev-vm" in read(repo)["machines"]  # the write itself already happened


def test_pre_commit_hook_is_skipped_like_clan_cli(repo: Path) -> None:
    write_hook(repo, "pre-commit", "exit 1\n")
    assert push(repo, "dev-vm", ssh_port=2222, commit=True) is True
    assert commits(repo)[0] == "inventory.json: add machine dev-vm"


# --- find_clan_dir -------------------------------------------------------------------------


def test_find_clan_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env_dir, flake = tmp_path / "explicit", tmp_path / "env", tmp_path / "flake"
    flake.mkdir()
    (flake / INV).write_text("{}")
    monkeypatch.setenv("CLAN_DIR", str(env_dir))

    assert find_clan_dir(explicit, flake) == explicit
    assert find_clan_dir(None, flake) == env_dir

    monkeypatch.setenv("CLAN_DIR", "")  # empty counts as unset
    assert find_clan_dir(None, flake) == flake
    monkeypatch.delenv("CLAN_DIR")
    assert find_clan_dir(None, flake) == flake
    assert find_clan_dir(explicit, flake) == explicit


def test_find_clan_dir_needs_an_inventory_in_the_flake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLAN_DIR", raising=False)
    assert find_clan_dir(None, tmp_path) is None
    (tmp_path / INV).mkdir()  # a directory of that name is not an inventory
    assert find_clan_dir(None, tmp_path) is None
    assert find_clan_dir(None, None) is None


# --- files someone else planted ----------------------------------------------------------------


@pytest.fixture
def shared_clan() -> Iterator[Path]:
    """A clan directory others may write to (sticky, like a shared checkout in /tmp)."""
    shared = Path(tempfile.mkdtemp(prefix="clan-shared-", dir="/tmp"))
    shared.chmod(0o1777)
    (shared / INV).write_text(clan_text(CLAN))
    yield shared
    shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_planted_lock_link_is_never_followed(tmp_path: Path, shared_clan: Path) -> None:
    clan_dir = shared_clan
    victim = tmp_path / "victim"
    victim.write_text("root's own\n")
    victim.chmod(0o600)
    os.utime(victim, ns=(OLD_NS, OLD_NS))
    as_nobody("ln", "-s", str(victim), str(clan_dir / LOCK_FILE))
    with pytest.raises(InventoryError, match="is a symbolic link; refusing to follow it"):
        push(clan_dir, "dev-vm", ssh_port=2222)
    assert victim.read_text() == "root's own\n" and victim.stat().st_mtime_ns == OLD_NS
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert "dev-vm" not in read(clan_dir)["machines"]  # decided before anything changed
    # A dangling link: following it would make a file of root's wherever it points.
    os.unlink(clan_dir / LOCK_FILE)
    made = tmp_path / "made-through-the-link"
    as_nobody("ln", "-s", str(made), str(clan_dir / LOCK_FILE))
    with pytest.raises(InventoryError, match="is a symbolic link"):
        push(clan_dir, "dev-vm", ssh_port=2222)
    assert not made.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_lock_file_of_another_user_is_shared_and_never_truncated(shared_clan: Path) -> None:
    clan_dir = shared_clan
    as_nobody("sh", "-c", f"echo theirs > {clan_dir / LOCK_FILE}")
    push(clan_dir, "dev-vm", ssh_port=2222)
    assert (clan_dir / LOCK_FILE).read_text() == "theirs\n"
    assert "dev-vm" in read(clan_dir)["machines"]
    os.unlink(clan_dir / LOCK_FILE)
    os.mkfifo(clan_dir / LOCK_FILE)  # not a file at all: refused, not waited on
    with pytest.raises(InventoryError, match="is not a regular file"):
        remove(clan_dir, "dev-vm")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_an_inventory_link_of_another_user_is_not_followed(
    tmp_path: Path, shared_clan: Path
) -> None:
    clan_dir = shared_clan
    victim = tmp_path / "victim.json"
    victim.write_text("{}\n")
    os.unlink(clan_dir / INV)
    as_nobody("ln", "-s", str(victim), str(clan_dir / INV))
    with pytest.raises(InventoryError, match="symbolic link of another user"):
        push(clan_dir, "dev-vm", ssh_port=2222)
    assert victim.read_text() == "{}\n"
