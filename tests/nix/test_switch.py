"""``switch``: a running NixOS VM brought to its changed configuration in place.

NixOS cannot be built here (no nixpkgs), so the VM is the stand-in NixOS of
tests/nix/fake-nixos booting a guest that does what a NixOS VM of qemu-vm.nix does with the
host's store (tests/guests/ninep.py: Debian's generic kernel, which has 9p; it mounts the
`nix-store` share at /nix/.ro-store under an overlay at /nix/store and links
/run/current-system to the system of init=). The stand-in system's switch-to-configuration
leaves a marker: it links /run/current-system to itself and appends "ACTION SYSTEM" to
/run/switch-to-configuration.log. What only a real NixOS shows (its activation, its units
restarted) is not run here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import READY, ROOT, Guest
from tests.guests import ninep
from tests.nix.test_flake_module import FLAKE_PARTS, NIXPKGS_LIB, copy_module
from tests.nix_fixtures import NixCLI, git, ncli, needs_nix, skip_without_git_flakes

__all__ = ["ncli"]
pytestmark = [
    needs_nix,
    pytest.mark.vm,
    pytest.mark.skipif(
        not (FLAKE_PARTS and NIXPKGS_LIB),
        reason="set CLAN_VM_TEST_FLAKE_PARTS and CLAN_VM_TEST_NIXPKGS_LIB to local checkouts",
    ),
    pytest.mark.xdist_group("switch"),
]

FLAKE = """{
  inputs.flake-parts.url = "path:%(flake_parts)s";
  inputs.nixpkgs-lib.url = "path:%(nixpkgs_lib)s";
  inputs.flake-parts.inputs.nixpkgs-lib.follows = "nixpkgs-lib";
  outputs = inputs@{ self, flake-parts, nixpkgs-lib, ... }:
    let
      inherit (nixpkgs-lib) lib;
      busybox = "${self}/busybox";
      pkgs = import ./fake-nixos/pkgs.nix {
        inherit busybox; kernel = "${self}/vmlinuz"; initrd = "${self}/initrd";
      };
      nixosSystem = import ./fake-nixos { inherit lib pkgs; };
      # A derivation whose builder fails, for a configuration that does not build.
      failing = derivation {
        name = "failing-firmware"; system = "x86_64-linux"; builder = busybox;
        args = [ "sh" "-c" "echo fetching firmware; echo 'no such firmware' >&2; exit 2" ];
      };
    in
    flake-parts.lib.mkFlake { inherit inputs; } {
      systems = [ "x86_64-linux" ];
      imports = [ (import ./flake-module.nix { packages.x86_64-linux.default = "/unused"; }) ];
      flake.nixosConfigurations.web = nixosSystem {
        modules = [ ./web.nix { _module.args = { inherit failing; }; } ];
      };
      perSystem = { ... }: {
        clanVmsRunner.tool = "clan-vm-manager";
        clanVmsRunner.writeScript = name: text: builtins.toFile name text;
        clanVmsFromNixos.enable = true;
        clanVms.web = { memory = 256; bootTest.expect = "%(ready)s"; };
      };
    };
}
"""
WEB = """{ failing, ... }: {
  imports = [ { boot.kernelParams = [ "no_timer_check" ]; } ];
  networking.hostName = "web";
  %s
}
"""


@pytest.fixture(scope="module")
def guest_9p() -> tuple[Path, Path]:
    return ninep.ensure()


@pytest.fixture
def flake(tmp_path: Path, guest_9p: tuple[Path, Path]) -> Path:
    directory = tmp_path / "vms"
    directory.mkdir()
    copy_module(directory)
    shutil.copytree(ROOT / "tests" / "nix" / "fake-nixos", directory / "fake-nixos")
    shutil.copy(guest_9p[0], directory / "vmlinuz")
    shutil.copy(guest_9p[1], directory / "initrd")
    shutil.copy("/bin/busybox", directory / "busybox")
    (directory / "flake.nix").write_text(
        FLAKE % {"flake_parts": FLAKE_PARTS, "nixpkgs_lib": NIXPKGS_LIB, "ready": READY}
    )
    (directory / "web.nix").write_text(WEB % "")
    skip_without_git_flakes()
    git(directory, "init", "-q")
    git(directory, "add", "-A")
    git(directory, "commit", "-qm", "vms")
    return directory


def configure(flake: Path, settings: str) -> None:
    """The machine web, changed: SETTINGS added to its configuration."""
    (flake / "web.nix").write_text(WEB % settings)
    git(flake, "commit", "-qam", "changed")


def in_guest(ncli: NixCLI, *argv: str) -> str:
    return ncli.ok("exec", "web", "--", *argv).out.strip()


def system_in(config: dict[str, object]) -> str:
    words = str(config["append"]).split()
    return next(w for w in words if w.startswith("init="))[len("init=") : -len("/init")]


def test_switch_activates_the_changed_system_in_the_running_guest(
    ncli: NixCLI, flake: Path
) -> None:
    refs = ["--flake", str(flake)]
    ncli.ok("start", "web", *refs, "--wait-for", READY, "--timeout", "180")
    booted = system_in(json.loads(ncli.ok("show", "web", "--json").out)["config"])
    # The guest reads the host's store over 9p, and runs the system init= names.
    assert ninep.STORE_MOUNTED in ncli.ok("console", "web", "--log").out
    assert in_guest(ncli, "readlink", "/run/current-system") == booted
    pid = json.loads(ncli.ok("status", "web", "--json").out)["pid"]

    # A change that needs no reboot: a new system, the same kernel, initrd and parameters.
    configure(flake, "services.openssh.enable = true;")
    switched = ncli.run("switch", "web", *refs)
    assert switched.code == 0, switched.err
    new = switched.out.strip().removeprefix("switched to ").removesuffix(" (test)")
    assert new != booted and new.endswith("-nixos-system-web")
    assert "activating the configuration..." in switched.err  # relayed from the guest
    assert "restart" not in switched.err, switched.err
    # The marker the stand-in's switch-to-configuration leaves, and the system it now runs.
    assert in_guest(ncli, "cat", "/run/switch-to-configuration.log") == f"test {new}"
    assert in_guest(ncli, "readlink", "/run/current-system") == new
    assert in_guest(ncli, "cat", f"{new}/sshd") == "true"
    assert json.loads(ncli.ok("status", "web", "--json").out)["pid"] == pid  # in place
    event = json.loads(ncli.ok("history", "--vm", "web", "--json").out)[0]
    assert (event["action"], event["result"]) == ("switch", "ok")
    assert event["details"] == f"to {new}: bin/switch-to-configuration test exited 0"

    # Its exit code is the command's, and the event says it failed.
    configure(flake, "services.openssh.enable = true; stand-in.switchExitCode = 4;")
    failed = ncli.run("switch", "web", *refs)
    assert failed.code == 4 and "switched to" in failed.out
    exited = failed.out.strip().removeprefix("switched to ").removesuffix(" (test)")
    event = json.loads(ncli.ok("history", "--vm", "web", "--json").out)[0]
    assert (event["action"], event["result"]) == ("switch", "failed")

    # A configuration that does not build: what its builder said, and nothing changes.
    configure(flake, 'boot.kernelParams = [ "fw=${failing}" ];')
    broken = ncli.run("switch", "web", *refs)
    assert broken.code == 1
    assert "failing-firmware.drv' failed with exit code 2" in broken.err
    assert "  | no such firmware" in broken.err
    assert "  the whole log: nix log /nix/store/" in broken.err
    assert in_guest(ncli, "readlink", "/run/current-system") == exited

    # Kernel parameters changed: activated, and a restart is said to be needed ...
    configure(flake, 'boot.kernelParams = [ "clan.switched=1" ];')
    later = ncli.run("switch", "web", *refs)
    assert later.code == 0, later.err
    assert "kernel parameters changed: restart the VM to boot them" in later.err
    assert "clan.switched" not in in_guest(ncli, "cat", "/proc/cmdline")
    # ... which --restart does: the VM boots the new system.
    restarted = ncli.run("switch", "web", *refs, "--restart", "--wait-for", READY)
    assert restarted.code == 0, restarted.err
    assert "clan.switched=1" in in_guest(ncli, "cat", "/proc/cmdline")
    final = system_in(json.loads(ncli.ok("show", "web", "--json").out)["config"])
    assert in_guest(ncli, "readlink", "/run/booted-system") == final
    actions = [e["action"] for e in json.loads(ncli.ok("history", "--vm", "web", "--json").out)]
    assert actions[:2] == ["switch", "restart"]
    ncli.ok("stop", "web")


def test_switch_is_refused_where_it_cannot_work(
    ncli: NixCLI, flake: Path, guest_9p: tuple[Path, Path]
) -> None:
    missing = ncli.run("switch", "web", "--flake", str(flake))
    assert missing.code == 2 and missing.err.count("\n") == 1, missing.err
    ncli.ok("create", "web", "--flake", str(flake))
    not_running = ncli.run("switch", "web")
    assert not_running.code == 1
    assert "VM 'web' is not running (it is stopped); start it" in not_running.err
    ncli.create_guest("plain", Guest(*guest_9p))
    ncli.ok("start", "plain", "--wait-for", READY, "--timeout", "180")
    plain = ncli.run("switch", "plain")
    assert plain.code == 2
    assert "VM 'plain' is not the VM of a NixOS configuration (nixosConfiguration)" in plain.err
    ncli.ok("stop", "plain", "--force")
