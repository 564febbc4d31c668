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

from clan_vm_tasks import schema
from tests.conftest import ROOT
from tests.nix_fixtures import NixCLI, git, ncli, needs_nix, skip_without_git_flakes

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
    ("kernel", "/nix/store/00000000000000000000000000000000-linux/bzImage"),
    ("kernel", "/nix/store/../../etc/shadow"), ("initrd", "/nix/store/x/../../etc/shadow"),
    ("baseImage", "/nix/store/00000000000000000000000000000000-a/../../../etc/shadow"),
    ("shares", {"data": {"source": "/srv/data", "target": "/data"}}),
    ("shares", {"data": {"source": "relative/dir"}}), ("shares", {"bad tag": {}}),
    ("shares", {"data": {"type": "virtiofs", "readOnly": False}}),
    ("shares", {"data": {"type": "nfs"}}), ("shares", {"data": {"target": "mnt"}}),
    ("shares", {"nix-store": {"securityModel": "none"}}),
    ("shares", {"data": {"securityModel": "mapped"}}),
    ("extraDisks", {"data": {"size": 64}}), ("extraDisks", {"data": {"size": 0}}),
    ("extraDisks", {"a-name-longer-than-20": {"size": 1}}),
    ("rootFilesystem", {"type": "ext4", "label": "nixos"}), ("rootFilesystem", {}),
    ("rootFilesystem", {"type": "btrfs"}), ("rootFilesystem", {"label": "seventeen-letters"}),
    ("graphics", True), ("graphics", "yes"),
    ("name", "web-1"), ("name", "my_vm"), ("name", "-web"), ("name", "web-"), ("name", "a" * 63),
    ("name", "a" * 64), ("name", ""), ("name", 3),
    ("network.restrict", True), ("network.restrict", "yes"),
    ("network.forwardPorts", [{"hostPort": 80, "guestPort": 80, "guestAddress": "10.0.2.9"}]),
    ("network.forwardPorts", [{"hostPort": 80, "guestPort": 80, "guestAddress": "10.0.2"}]),
]  # fmt: skip
# Files a flake names must be in the Nix store: the module refuses host paths at evaluation,
# where the model (which also takes command-line definitions) leaves them to the trust check.
STRICTER_IN_NIX = [
    ("kernel", "/boot/vmlinuz"), ("baseImage", "/images/base.qcow2"),
    ("kernel", "/nix/store/../../etc/shadow"), ("initrd", "/nix/store/x/../../etc/shadow"),
    ("baseImage", "/nix/store/00000000000000000000000000000000-a/../../../etc/shadow"),
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
          literal = { kernel = ./vmlinuz-probe; initrd = ./vmlinuz-probe; };
        };
      };
    };
}
"""


def make_user_flake(directory: Path, probes: list[int]) -> Path:
    """A flake-parts flake with flakeModules.default and the PROBES of these indices."""
    copy_module(directory)
    (directory / "vmlinuz-probe").write_text("not really a kernel")
    chosen = {f"probe{i}": {"path": PROBES[i][0], "value": PROBES[i][1]} for i in probes}
    (directory / "probes.json").write_text(json.dumps(chosen))
    (directory / "flake.nix").write_text(
        FLAKE % {"flake_parts": FLAKE_PARTS, "nixpkgs_lib": NIXPKGS_LIB, "system": SYSTEM}
    )
    skip_without_git_flakes()
    git(directory, "init", "-q")
    git(directory, "add", "-A")
    return directory


@pytest.fixture(scope="module")
def user_flake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every probe: for the comparison of the module with the model (plain nix eval)."""
    return make_user_flake(tmp_path_factory.mktemp("userflake"), list(range(len(PROBES))))


HOST_KERNEL = PROBES.index(("kernel", "/boot/vmlinuz"))
TWO_CPUS = PROBES.index(("cpus", "two"))


@pytest.fixture(scope="module")
def small_flake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few VMs, two of them broken: for the tool, which evaluates every VM it is given."""
    return make_user_flake(tmp_path_factory.mktemp("smallflake"), [HOST_KERNEL, TWO_CPUS])


def copy_module(directory: Path) -> None:
    """flakeModules.default and the files it imports, into DIRECTORY."""
    (directory / "lib").mkdir(exist_ok=True)
    (directory / "nixos-modules").mkdir(exist_ok=True)
    shutil.copy(ROOT / "flake-module.nix", directory)
    for source in (ROOT / "lib").glob("*.nix"):
        shutil.copy(source, directory / "lib")
    for name in ("vm-variant.nix", "vm-sshd.nix"):
        shutil.copy(ROOT / "nixos-modules" / name, directory / "nixos-modules")


def nix_eval(flake: Path, attribute: str, apply: str | None = None) -> Any:
    argv = ["nix", "--extra-experimental-features", "nix-command flakes"]
    argv += ["--option", "substituters", "", "eval", "--json", f"{flake}#{attribute}"]
    argv += ["--apply", apply] if apply else []
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_option_names_and_defaults_match_the_model(user_flake: Path) -> None:
    plain = nix_eval(user_flake, f"clanVms.{SYSTEM}.plain")
    assert plain == schema.VMConfig(name="plain").model_dump(mode="json", by_alias=True)


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
            schema.VMConfig.model_validate(data)
            python = True
        except ValueError:
            python = False
        if (path, value) in STRICTER_IN_NIX:  # the model takes it, the module must not
            if results[f"probe{i}"] or not python:
                disagreements.append(f"{path}={value!r}: nix {results[f'probe{i}']}, not stricter")
            continue
        if results[f"probe{i}"] != python:
            disagreements.append(f"{path}={value!r}: nix {results[f'probe{i}']}, model {python}")
    assert not disagreements


def test_a_type_error_in_a_definition_is_one_line_naming_the_attribute(
    ncli: NixCLI, small_flake: Path
) -> None:
    result = ncli.run("eval", "--vm", f"probe{TWO_CPUS}", "--flake", str(small_flake))
    assert result.code == 1
    (line,) = result.err.strip().splitlines()
    path = f"clanVms.{SYSTEM}.probe{TWO_CPUS}.cpus"
    assert line.startswith(f"error: nix evaluation of {path} failed: ")
    # The offending value and the file that defines it (the checkout's, not the store copy).
    assert "not of type" in line and "Definition values: - In `" in line
    assert f"{small_flake}/flake.nix" in line and line.endswith('"two"')


def test_files_are_path_literals_derivations_or_store_paths_never_host_files(
    ncli: NixCLI, small_flake: Path
) -> None:
    literal = json.loads(ncli.ok("eval", "--vm", "literal", "--flake", str(small_flake)).out)
    kernel = literal["literal"]["kernel"]
    assert kernel.startswith("/nix/store/") and kernel.endswith("-vmlinuz-probe")
    built = ncli.ok("build", "--vm", "literal", "--flake", str(small_flake)).out
    assert kernel in built
    roots = {os.path.realpath(p) for p in (ncli.state_dir / "gcroots").glob("literal/*/result*")}
    assert kernel in roots
    refused = ncli.run("eval", "--vm", f"probe{HOST_KERNEL}", "--flake", str(small_flake))
    assert refused.code == 1
    assert "path in the flake (./vmlinuz), derivation or /nix/store path" in refused.err
    assert '"/boot/vmlinuz"' in refused.err


def test_generated_apps_run_the_tool_against_the_users_flake(
    ncli: NixCLI, small_flake: Path
) -> None:
    proc = ncli.nix_run(small_flake, "vm-list", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = {vm["name"]: vm for vm in json.loads(proc.stdout)}
    assert listed["web"]["state"] == "not-created" and listed["web"]["memory"] == 256
    assert listed["web"]["eval_error"] is None
    # Invalid VMs are listed as evaluation errors, not hidden, and do not hide the others.
    broken = listed[f"probe{TWO_CPUS}"]
    assert broken["state"] == "eval-error" and "not of type" in broken["eval_error"]
    # The table has the column too; a VM that exists and no longer evaluates is marked.
    ncli.ok("create", "web", "--flake", str(small_flake))
    table = ncli.ok("list", "--flake", str(small_flake)).out.splitlines()
    assert table[0].split()[-2:] == ["EVAL", "ERROR"]
    row = next(line for line in table if line.startswith(f"probe{TWO_CPUS} "))
    assert "eval-error" in row and "not of type" in row
