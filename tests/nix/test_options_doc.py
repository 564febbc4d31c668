"""The option reference is complete and current: docs/options.md is rendered from
docs/options.json, which is what the modules declare (checked with a nixpkgs.lib checkout)."""

from __future__ import annotations

import json

import pytest

from tests.nix import options_doc
from tests.nix.test_flake_module import NIXPKGS_LIB
from tests.nix_fixtures import needs_nix

REGENERATE = "regenerate it: CLAN_VM_TEST_NIXPKGS_LIB=... python -m tests.nix.options_doc"


def test_every_option_has_a_description_a_type_a_default_and_an_example() -> None:
    data = json.loads(options_doc.JSON_FILE.read_text())
    options = [o for group, found in data.items() if group != "qemuVm" for o in found]
    assert len(options) > 40
    required = {"clanVms.<name>.extraDisks.<name>.size"} | {
        f"clanVms.<name>.network.forwardPorts.*.{port}" for port in ("hostPort", "guestPort")
    }
    incomplete = [
        o["name"]
        for o in options
        if not (o.get("description") or "").strip()
        or not o.get("type")
        or "example" not in o
        or ("default" not in o and o["name"] not in required)
    ]
    assert incomplete == []


def test_the_markdown_is_rendered_from_the_json() -> None:
    rendered = options_doc.render(json.loads(options_doc.JSON_FILE.read_text()))
    assert options_doc.MARKDOWN_FILE.read_text() == rendered, (
        f"docs/options.md is stale: {REGENERATE}"
    )


@needs_nix
@pytest.mark.skipif(
    not NIXPKGS_LIB, reason="set CLAN_VM_TEST_NIXPKGS_LIB to a nixpkgs.lib checkout"
)
def test_the_json_is_what_the_modules_declare() -> None:
    assert NIXPKGS_LIB
    current = json.loads(options_doc.JSON_FILE.read_text())
    assert options_doc.dump(NIXPKGS_LIB) == current, f"docs/options.json is stale: {REGENERATE}"
