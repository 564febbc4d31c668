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

NIX_FILES = [
    "flake.nix",
    "flake-module.nix",
    "lib/apps.nix",
    "nix/package.nix",
    "nixos-modules/guest.nix",
    "nixos-modules/host.nix",
    "templates/default/flake.nix",
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
    source = "/nix/store/xyz-source/vmlinuz"
    assert evaluate.needed_store_objects(source, {}) == ["/nix/store/xyz-source"]
    assert evaluate.needed_store_objects("/boot/vmlinuz", {}) == []


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
def test_apps_cover_every_task_and_pass_the_flake_only_where_definitions_matter() -> None:
    expr = (
        f"builtins.mapAttrs (n: a: a.program) (import {ROOT}/lib/apps.nix {{"
        ' tool = "TOOL"; flake = "FLAKE"; writeScript = name: text: text; })'
    )
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    programs = json.loads(proc.stdout)  # the scripts themselves, not files
    expected = "boot-test console create delete history list restart revert show snapshot start"
    assert sorted(programs) == sorted(f"vm-{t}" for t in [*expected.split(), "status", "stop"])
    assert "exec TOOL start --flake FLAKE" in programs["vm-start"]
    assert "exec TOOL stop " in programs["vm-stop"] and "--flake" not in programs["vm-stop"]
