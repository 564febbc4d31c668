"""flake-module.nix under real flake-parts and nixpkgs.lib (local checkouts named by
$CLAN_VM_TEST_FLAKE_PARTS and $CLAN_VM_TEST_NIXPKGS_LIB; skipped without them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from clan_vm_tasks.models import VMConfig
from tests.conftest import ROOT
from tests.nix_fixtures import NixCLI, git, ncli, needs_nix

__all__ = ["ncli"]
FLAKE_PARTS = os.environ.get("CLAN_VM_TEST_FLAKE_PARTS")
NIXPKGS_LIB = os.environ.get("CLAN_VM_TEST_NIXPKGS_LIB")
pytestmark = [
    needs_nix,
    pytest.mark.skipif(
        not (FLAKE_PARTS and NIXPKGS_LIB),
        reason="set CLAN_VM_TEST_FLAKE_PARTS and CLAN_VM_TEST_NIXPKGS_LIB to local checkouts "
        "of hercules-ci/flake-parts and nix-community/nixpkgs.lib",
    ),
]
SYSTEM = "x86_64-linux"

# (attribute path, value): the module must accept exactly what the pydantic model accepts.
PROBES: list[tuple[str, Any]] = [
    ("cpus", 0), ("cpus", 1), ("cpus", 256), ("cpus", 257), ("cpus", "two"),
    ("memory", 15), ("memory", 16), ("diskSize", 0), ("diskSize", 64),
    ("accel", "kvm"), ("accel", "xen"), ("machine", "microvm"), ("machine", "bad machine"),
    ("append", "console=ttyS0"), ("append", 3), ("kernel", "/boot/vmlinuz"), ("kernel", 1),
    ("qemuArgs", ["-s"]), ("qemuArgs", "-s"),
    ("network.mode", "bridge"), ("network.mode", "wifi"),
    ("network", {"mode": "bridge", "bridge": "br0"}),
    ("network", {"mode": "bridge", "bridge": "no spaces allowed"}),
    ("network", {"mode": "tap", "tap": "tap0"}), ("network", {"mode": "tap", "tap": "a b"}),
    ("baseImage", "/images/base.qcow2"), ("baseImage", 7),
    ("network.mac", "02:00:00:00:00:01"), ("network.mac", "zz"),
    ("network.forwardPorts", [{"hostPort": 2222, "guestPort": 22}]),
    ("network.forwardPorts", [{"hostPort": 0, "guestPort": 22}]),
    ("network.forwardPorts", [{"hostPort": "auto", "guestPort": 22}]),
    ("network.forwardPorts", [{"hostPort": "any", "guestPort": 22}]),
    ("network.forwardPorts", [{"protocol": "sctp", "hostPort": 1, "guestPort": 22}]),
    ("bootTest.expect", "login:"), ("bootTest.expect", 3),
    ("bootTest.timeout", 0), ("bootTest.timeout", 30),
    ("bootTest.checks", ["systemctl is-system-running"]), ("bootTest.checks", "true"),
    ("agent", False), ("agent", "yes"), ("sshUser", "alice"), ("sshUser", "Bad User"),
    ("host", "qemu:///system"), ("host", 3),
]  # fmt: skip

FLAKE = """{
  inputs.flake-parts.url = "path:%(flake_parts)s";
  inputs.nixpkgs-lib.url = "path:%(nixpkgs_lib)s";
  inputs.flake-parts.inputs.nixpkgs-lib.follows = "nixpkgs-lib";
  outputs = inputs@{ self, flake-parts, nixpkgs-lib, ... }:
    let
      inherit (nixpkgs-lib) lib;
      probes = builtins.fromJSON (builtins.readFile ./probes.json);
    in
    flake-parts.lib.mkFlake { inherit inputs; } {
      systems = [ "%(system)s" ];
      imports = [ (import ./flake-module.nix { packages.%(system)s.default = "/unused"; }) ];
      flake.probeResults = builtins.mapAttrs (name: _:
        (builtins.tryEval (builtins.deepSeq self.clanVms.%(system)s.${name} true)).success) probes;
      perSystem = { ... }: {
        clanVmsRunner.tool = "clan-vm-manager";
        clanVmsRunner.writeScript = name: text: builtins.derivation {
          inherit name text;
          system = "%(system)s";
          builder = "/bin/busybox";
          args = [ "sh" "-c" ''
            echo "#!/bin/busybox sh" > $out; echo "$text" >> $out; /bin/busybox chmod +x $out
          '' ];
        };
        clanVms = builtins.mapAttrs
          (name: p: lib.setAttrByPath (lib.splitString "." p.path) p.value) probes // {
          web = { cpus = 1; memory = 256; };
          plain = { };
        };
      };
    };
}
"""


@pytest.fixture(scope="module")
def user_flake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("userflake")
    (directory / "lib").mkdir()
    shutil.copy(ROOT / "flake-module.nix", directory)
    shutil.copy(ROOT / "lib" / "apps.nix", directory / "lib")
    probes = {f"probe{i}": {"path": p, "value": v} for i, (p, v) in enumerate(PROBES)}
    (directory / "probes.json").write_text(json.dumps(probes))
    (directory / "flake.nix").write_text(
        FLAKE % {"flake_parts": FLAKE_PARTS, "nixpkgs_lib": NIXPKGS_LIB, "system": SYSTEM}
    )
    git(directory, "init", "-q")
    git(directory, "add", "-A")
    return directory


def nix_eval(flake: Path, attribute: str) -> Any:
    argv = ["nix", "--extra-experimental-features", "nix-command flakes"]
    argv += ["--option", "substituters", "", "eval", "--json", f"{flake}#{attribute}"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_option_names_and_defaults_match_the_model(user_flake: Path) -> None:
    plain = nix_eval(user_flake, f"clanVms.{SYSTEM}.plain")
    assert plain == VMConfig(name="plain").model_dump(mode="json", by_alias=True)


def test_option_types_accept_what_the_model_accepts(user_flake: Path) -> None:
    results = nix_eval(user_flake, "probeResults")
    disagreements = []
    for i, (path, value) in enumerate(PROBES):
        data: dict[str, Any] = {"name": "probe"}
        *parents, leaf = path.split(".")
        target = data
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
        try:
            VMConfig.model_validate(data)
            python = True
        except ValueError:
            python = False
        if results[f"probe{i}"] != python:
            disagreements.append(f"{path}={value!r}: nix {results[f'probe{i}']}, model {python}")
    assert not disagreements


def test_a_type_error_in_a_definition_is_one_line_naming_the_attribute(
    ncli: NixCLI, user_flake: Path
) -> None:
    result = ncli.run("eval", "--vm", "probe4", "--flake", str(user_flake))
    assert result.code == 1
    (line,) = result.err.strip().splitlines()
    assert line.startswith(f"error: nix evaluation of clanVms.{SYSTEM}.probe4.cpus failed: ")
    assert "not of type" in line


def test_generated_apps_run_the_tool_against_the_users_flake(
    ncli: NixCLI, user_flake: Path
) -> None:
    proc = ncli.nix_run(user_flake, "vm-list", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = {vm["name"]: vm for vm in json.loads(proc.stdout)}
    assert listed["web"]["state"] == "not-created" and listed["web"]["memory"] == 256
    # Invalid probes are listed as evaluation errors, not hidden.
    assert listed["probe4"]["state"] == "eval-error"
