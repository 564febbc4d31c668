"""Pieces of the Nix integration that need no evaluation: parsers, keys, Nix file syntax."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.nix import cache as evalcache
from clan_vm_tasks.nix import command, evaluate
from clan_vm_tasks.nix.declared import to_config
from tests.conftest import ROOT
from tests.nix_fixtures import git, needs_nix

_NIX_DIRS = ("*.nix", "lib/*.nix", "nix/*.nix", "nixos-modules/*.nix", "templates/*/*.nix")
NIX_FILES = [
    *sorted(str(p.relative_to(ROOT)) for pattern in _NIX_DIRS for p in ROOT.glob(pattern)),
    "tests/nix/flake.nix",
]


def test_eval_jobs_lines_are_parsed_including_per_attribute_errors() -> None:
    lines = [
        json.dumps(
            {
                "attr": "web.initrd",
                "attrPath": ["web", "initrd"],
                "drvPath": "/nix/store/aaa-initrd.drv",
                "outputs": {"out": "/nix/store/bbb-initrd"},
                "system": "x86_64-linux",
                "name": "initrd",
            }
        ),
        "",
        json.dumps(
            {
                "attr": "db.kernel",
                "attrPath": ["db", "kernel"],
                "error": "error:\n  … while evaluating\n\n  error: attribute 'bzImage' missing",
            }
        ),
    ]
    web, db = evaluate.parse_eval_jobs(lines)
    assert web.attr_path == ("web", "initrd") and web.outputs == {"out": "/nix/store/bbb-initrd"}
    assert web.drv_path == "/nix/store/aaa-initrd.drv" and web.error is None
    assert db.error == "attribute 'bzImage' missing"
    with pytest.raises(command.NixError, match="not JSON"):
        evaluate.parse_eval_jobs(["{broken"])


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (  # Nix 2.8: the cause first, then a code excerpt
            "error: attribute 'foo' missing\n\n       at /nix/store/x-source/flake.nix:5:9:\n"
            "            4|\n            5|   a = b.foo;\n"
            "(use '--show-trace' to show detailed location information)\n",
            "attribute 'foo' missing",
        ),
        (  # current Nix: a trace, and the cause last
            "error:\n       … while evaluating the attribute 'cpus'\n\n"
            "       error: A definition for option `cpus' is not of type `integer'.\n",
            "A definition for option `cpus' is not of type `integer'.",
        ),
        (
            "\x1b[31;1merror:\x1b[0m cannot coerce a set to a string\n",
            "cannot coerce a set to a string",
        ),
    ],
)
def test_the_meaningful_line_of_a_nix_error(stderr: str, expected: str) -> None:
    assert command.first_error_line(stderr) == expected


def test_store_objects_come_from_the_context_or_the_path() -> None:
    drv = {"/nix/store/abc-initrd.drv": {"outputs": ["out"]}}
    assert evaluate.needed_store_objects("/nix/store/def-initrd", drv) == [
        "/nix/store/abc-initrd.drv"
    ]
    source = "/nix/store/" + "x" * 32 + "-source"
    assert evaluate.needed_store_objects(source + "/vmlinuz", {}) == [source]
    assert evaluate.needed_store_objects("/boot/vmlinuz", {}) == []
    # Any field, any shape: a store path written into qemuArgs without context is kept too.
    assert evaluate.needed_store_objects(["-bios", source + "/bios.bin"], {}) == [source]


def test_every_field_of_a_definition_says_what_it_needs() -> None:
    toplevel = "/nix/store/" + "t" * 32 + "-nixos-system-web"
    raw = {
        "definition": {"append": f"init={toplevel}/init", "cpus": 1, "qemuArgs": []},
        "context": {
            "append": {"/nix/store/aaa-nixos-system-web.drv": {"outputs": ["out"]}},
            "cpus": {},
            "qemuArgs": {},
        },
    }
    evaluated = evaluate._evaluated(raw, "clanVms.x86_64-linux.web")
    assert evaluated.installables == {"append": ["/nix/store/aaa-nixos-system-web.drv"]}


def test_a_wrong_type_is_reported_with_the_attribute_path() -> None:
    evaluated = evaluate.Evaluated(definition={"cpus": "two", "network": {"mode": "wifi"}})
    with pytest.raises(InvalidInput) as caught:
        to_config("web", evaluated)
    message = str(caught.value)
    assert "\n" not in message
    assert "clanVms.x86_64-linux.web.cpus: input should be a valid integer" in message
    assert 'got "two"' in message and "clanVms.x86_64-linux.web.network.mode:" in message


def test_the_cache_key_follows_tracked_content_dirty_or_not(tmp_path: Path) -> None:
    (tmp_path / "flake.nix").write_text("{ outputs = _: { }; }")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "flake.nix")
    first = evalcache.key(str(tmp_path), tmp_path, "x86_64-linux")
    (tmp_path / "notes.txt").write_text("untracked: nix does not see it")
    assert evalcache.key(str(tmp_path), tmp_path, "x86_64-linux") == first
    (tmp_path / "flake.nix").write_text("{ outputs = _: { a = 1; }; }")
    dirty = evalcache.key(str(tmp_path), tmp_path, "x86_64-linux")
    assert dirty != first
    git(tmp_path, "commit", "-qm", "x")
    assert evalcache.key(str(tmp_path), tmp_path, "x86_64-linux") == dirty
    assert evalcache.key(str(tmp_path), tmp_path, "aarch64-linux") != dirty


@needs_nix
@pytest.mark.parametrize("path", NIX_FILES)
def test_the_nix_files_parse(path: str) -> None:
    proc = subprocess.run(
        ["nix-instantiate", "--parse", str(ROOT / path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@needs_nix
def test_apps_cover_every_task_and_act_on_the_users_checkout() -> None:
    from clan_vm_tasks.tasks import ns

    expr = (
        f"builtins.mapAttrs (n: a: a.program) (import {ROOT}/lib/apps.nix {{"
        ' tool = "TOOL"; flake = "/nix/store/0000-source"; writeScript = name: text: text; })'
    )
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    programs = json.loads(proc.stdout)  # the scripts themselves, not files
    assert sorted(programs) == sorted(f"vm-{task}" for task in ns.task_names)
    # No app names the flake's store copy as the flake: the tool finds the checkout around
    # the working directory, and uses the copy only outside it.
    assert all("--flake /nix/store" not in p for p in programs.values())
    assert "export CLAN_VM_APP_FLAKE=/nix/store/0000-source" in programs["vm-start"]
    assert "exec TOOL start " in programs["vm-start"]
    assert 'exec TOOL list "$@" --flake' in programs["vm-list"]
    assert 'exec TOOL create "$@" --flake' in programs["vm-create"]


def test_nix_errors_keep_the_value_and_the_location() -> None:
    type_error = (
        "error: A definition for option `perSystem.x86_64-linux.clanVms.web.cpus' is not of "
        "type `integer between 1 and 256 (both inclusive)'. Definition values:\n"
        '       - In `/nix/store/3wwliwd5rl84ckkwc4qfzl62kw7yyzms-source/flake.nix\': "two"\n'
        "(use '--show-trace' to show detailed location information)\n"
    )
    assert command.describe_failure(type_error).endswith(
        "Definition values: - In `/nix/store/3wwliwd5rl84ckkwc4qfzl62kw7yyzms-source/flake.nix': "
        '"two"'
    )
    syntax = (
        "error: syntax error, unexpected '=', expecting ';'\n\n"
        "       at /nix/store/arf37w5klp9hfnghi4wx01j45a6kmdz6-source/flake.nix:3:11:\n\n"
        "            2|   syn = 1\n            3|   a = 2;\n             |   ^\n"
    )
    assert command.describe_failure(syntax) == (
        "syntax error, unexpected '=', expecting ';'\n"
        "  at /nix/store/arf37w5klp9hfnghi4wx01j45a6kmdz6-source/flake.nix:3:11"
    )


def test_errors_name_the_checkout_and_hint_at_git_add(tmp_path: Path) -> None:
    from clan_vm_tasks.nix import diagnose
    from clan_vm_tasks.nix.flakes import Flake

    (tmp_path / "flake.nix").write_text("{ outputs = _: { }; }")
    (tmp_path / "vmlinuz").write_text("kernel")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "flake.nix")
    copy = tmp_path / "store-copy"
    copy.mkdir()
    (copy / "flake.nix").write_text("{ outputs = _: { }; }")
    flake = Flake(str(tmp_path), tmp_path, explicit=True)
    text = f"getting status of '/nix/store/{'a' * 32}-source/vmlinuz': No such file or directory"
    explained = diagnose.explain(text, flake)
    assert f"{tmp_path}/vmlinuz exists, but git does not track it" in explained
    assert "git add vmlinuz?" in explained
    missing = "flake 'git+file:///x' does not provide attribute 'clanVms.x86_64-linux'"
    assert "import clan-vm-tasks.flakeModules.default" in diagnose.explain(missing, flake)


def test_a_nix_that_leaves_the_chroot_to_run_git_gets_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clan_vm_tasks.nix import diagnose
    from clan_vm_tasks.nix.flakes import Flake

    flake = Flake(str(tmp_path), tmp_path, explicit=True)
    text = (
        f"nix evaluation of clanVms.x86_64-linux failed: getting the HEAD of the Git tree "
        f"'{tmp_path}' failed with exit code 128: fatal: cannot change to '{tmp_path}': "
        "No such file or directory"
    )
    monkeypatch.setattr(diagnose, "in_chroot", lambda: True)
    assert "NixOS/nix#7602" in diagnose.explain(text, flake)
    monkeypatch.setattr(diagnose, "in_chroot", lambda: False)
    assert diagnose.explain(text, flake) == text


@needs_nix
def test_the_tools_flake_ships_a_lock_that_nix_takes_as_it_is(tmp_path: Path) -> None:
    lock = json.loads((ROOT / "flake.lock").read_text())
    nodes = lock["nodes"]
    assert nodes["root"]["inputs"] == {"flake-parts": "flake-parts", "nixpkgs": "nixpkgs"}
    assert nodes["flake-parts"]["inputs"] == {"nixpkgs-lib": ["nixpkgs"]}  # follows
    for name in ("flake-parts", "nixpkgs"):
        locked = nodes[name]["locked"]
        assert locked["type"] == "github" and len(locked["rev"]) == 40
        assert locked["narHash"].startswith("sha256-")
    # Complete and current for flake.nix: Nix (offline) would not change a thing.
    for name in ("flake.nix", "flake.lock"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    proc = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command flakes", "--option", "substituters",
         "", "flake", "metadata", "--json", "--no-update-lock-file", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["locks"] == lock


def test_definition_errors_name_nix_attributes_not_flags() -> None:
    evaluated = evaluate.Evaluated(definition={"network": {"mode": "tap"}})
    with pytest.raises(InvalidInput) as caught:
        to_config("web", evaluated)
    message = str(caught.value)
    assert "clanVms.x86_64-linux.web.network: " in message and "network.tap" in message
    assert "--tap" not in message
