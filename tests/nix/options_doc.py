"""The option reference, docs/options.md, generated from the modules themselves.

``python -m tests.nix.options_doc`` evaluates the options of ``flakeModules.default``
(lib/per-system.nix with lib/vm-options.nix), of ``nixosModules.guest`` and of the VM
variant (nixos-modules/vm-sshd.nix), and the table of what the tool does with each option of
nixpkgs' qemu-vm.nix (lib/qemu-vm-options.nix), with a nixpkgs.lib checkout
($CLAN_VM_TEST_NIXPKGS_LIB), writes them to docs/options.json and renders docs/options.md
from that. tests/nix/test_options_doc.py fails
when either is stale: the Markdown against the JSON always, the JSON against the modules when
the checkout is there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
JSON_FILE = ROOT / "docs" / "options.json"
MARKDOWN_FILE = ROOT / "docs" / "options.md"

EXPRESSION = """
let
  lib = import %(lib)s/lib;
  shown = o: o.visible && !o.internal && lib.head o.loc != "_module";
  docs = modules: map (o: builtins.removeAttrs o [ "declarations" "loc" ])
    (lib.filter shown (lib.optionAttrSetToDocList
      (lib.evalModules { modules = modules ++ [ { _module.check = false; } ]; }).options));
in {
  flake = docs [
    (import %(root)s/lib/per-system.nix { inherit lib; localFlake = { }; self = { }; })
    { _module.args = { pkgs = { }; system = "x86_64-linux"; }; }
  ];
  nixos = docs [
    %(root)s/nixos-modules/guest.nix
    { _module.args = { extendModules = null; }; }
  ];
  variant = docs [ %(root)s/nixos-modules/vm-sshd.nix ];
  qemuVm = lib.mapAttrsToList (name: e: { inherit name; inherit (e) decision how; })
    (import %(root)s/lib/qemu-vm-options.nix { inherit lib; }).decisions;
}
"""

PREAMBLE = """\
# Option reference

Generated from the modules by `python -m tests.nix.options_doc` (do not edit by hand;
`tests/nix/test_options_doc.py` fails when this file is stale). How to use them:
[nix.md](nix.md).

## flakeModules.default: `perSystem`

Import `clan-vm-tasks.flakeModules.default` in a flake-parts flake; these options are set in
`perSystem`. `clanVms.<name>.*` are the options of one VM (the flake output
`clanVms.<system>.<name>`, read by clan-vm-manager).
"""

NIXOS = """
## nixosModules.guest

Imported into a NixOS configuration, it gives the configuration's VM variant as a clanVms
definition (with `flakeModules.default`, `clanVms.<name>.nixosConfiguration` does the same
without it).
"""


VARIANT = """
## The VM variant of a NixOS configuration

Options of the VM variant clan-vm-manager makes of a NixOS configuration (nixpkgs'
`qemu-vm.nix` and these), set by `clanVms.<name>` or in the configuration's
`virtualisation.vmVariant`.
"""

QEMU_VM = """
## nixpkgs' qemu-vm.nix in a VM variant

What clan-vm-manager does with each `virtualisation.*` option of nixpkgs'
`nixos/modules/virtualisation/qemu-vm.nix` (and of the modules it imports) that a NixOS
configuration's VM variant sets, or qemu-vm.nix sets itself: the VM is what qemu-vm.nix's run
script would start, or the evaluation fails with an error naming the option and what to do.
(`lib/qemu-vm-options.nix`, checked against qemu-vm.nix's options by
`tests/nix/test_qemu_vm_options.py`.)

| option | decision | how |
|---|---|---|
"""


def dump(nixpkgs_lib: str) -> dict[str, Any]:
    """The declarations of every visible option, as nixpkgs.lib documents them."""
    expression = EXPRESSION % {"lib": nixpkgs_lib, "root": ROOT}
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expression],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if proc.returncode != 0:
        raise SystemExit(f"error: evaluating the options failed: {proc.stderr.strip()}")
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def _value(value: Any) -> str:
    if isinstance(value, dict) and value.get("_type") in ("literalExpression", "literalMD"):
        return str(value["text"])
    return json.dumps(value)


def _option(option: dict[str, Any]) -> str:
    lines = [f"### `{option['name']}`", "", str(option.get("description") or "").strip(), ""]
    lines.append(f"- Type: {option['type']}")
    if "default" in option:
        lines.append(_code("Default", _value(option["default"])))
    else:
        lines.append("- Default: none, it must be set.")
    if "example" in option:
        lines.append(_code("Example", _value(option["example"])))
    if option.get("readOnly"):
        lines.append("- Read-only.")
    return "\n".join(lines) + "\n"


def _code(label: str, text: str) -> str:
    if "\n" not in text:
        return f"- {label}: `{text}`"
    indented = "\n".join("  " + line if line else "" for line in text.rstrip().splitlines())
    return f"- {label}:\n\n  ```nix\n{indented}\n  ```"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(data: dict[str, Any]) -> str:
    parts = [PREAMBLE]
    parts += [_option(o) for o in data["flake"]]
    parts.append(NIXOS)
    parts += [_option(o) for o in data["nixos"]]
    parts.append(VARIANT)
    parts += [_option(o) for o in data["variant"]]
    rows = [
        f"| `virtualisation.{o['name']}` | {_cell(o['decision'])} | {_cell(o['how'])} |"
        for o in data["qemuVm"]
    ]
    parts.append(QEMU_VM + "\n".join(rows) + "\n")
    return "\n".join(parts)


def main() -> int:
    nixpkgs_lib = os.environ.get("CLAN_VM_TEST_NIXPKGS_LIB")
    if not nixpkgs_lib:
        print("error: set CLAN_VM_TEST_NIXPKGS_LIB to a nixpkgs.lib checkout", file=sys.stderr)
        return 2
    data = dump(nixpkgs_lib)
    JSON_FILE.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    MARKDOWN_FILE.write_text(render(data))
    print(f"wrote {JSON_FILE.relative_to(ROOT)} and {MARKDOWN_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
