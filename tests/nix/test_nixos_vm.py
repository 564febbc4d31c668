"""NixOS configurations as VMs, without nixpkgs: the translation (lib/nixos-to-vm.nix) as a
Nix function of a NixOS-shaped config, the VM variant (lib/from-nixos.nix) on a stand-in of
lib.nixosSystem (tests/nix/fake-nixos: nixpkgs.lib's module system, extendModules,
virtualisation.vmVariant as build-vm.nix makes it, a stand-in qemu-vm.nix), and a flake
whose nixosConfigurations become clanVms, created and booted by the tool. Needs the
nixpkgs.lib (and for the flake, flake-parts) checkouts, like test_flake_module."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import READY, ROOT, Guest
from tests.nix.test_flake_module import FLAKE_PARTS, NIXPKGS_LIB, copy_module, nix_eval
from tests.nix_fixtures import NixCLI, git, ncli, needs_nix, skip_without_git_flakes

__all__ = ["ncli"]
pytestmark = [
    needs_nix,
    pytest.mark.skipif(
        not NIXPKGS_LIB, reason="set CLAN_VM_TEST_NIXPKGS_LIB to a nixpkgs.lib checkout"
    ),
]
SYSTEM = "x86_64-linux"
STORE = "/nix/store/" + "0" * 32


def evaluate(expression: str) -> Any:
    """EXPRESSION (with lib, nixosToVm, fromNixos and nixosSystem in scope), strictly, as JSON."""
    prelude = f"""
      let
        lib = import {NIXPKGS_LIB}/lib;
        nixosToVm = import {ROOT}/lib/nixos-to-vm.nix {{ inherit lib; }};
        fromNixos = import {ROOT}/lib/from-nixos.nix {{ inherit lib; }};
        pkgs = import {ROOT}/tests/nix/fake-nixos/pkgs.nix {{
          busybox = "/bin/busybox"; kernel = "/boot/kernel"; initrd = "/boot/initrd";
        }};
        nixosSystem = import {ROOT}/tests/nix/fake-nixos {{ inherit lib pkgs; }};
      in
    """
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", prelude + expression],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return json.loads(proc.stdout)


MACHINE = """nixosSystem { modules = [ ({ lib, ... }: {
  networking.hostName = "web";
  fileSystems."/" = { device = "/dev/sda2"; fsType = "btrfs"; };
  fileSystems."/boot" = { device = "/dev/sda1"; fsType = "vfat"; };
  swapDevices = [ { device = "/dev/sda3"; } ];
  boot.loader.grub.device = "/dev/sda";
  virtualisation.vmVariant = {
    virtualisation.cores = 3;
    virtualisation.memorySize = 3072;
    virtualisation.diskSize = 2048;
    virtualisation.forwardPorts = [ { host.port = 2222; guest.port = 22; } ];
    virtualisation.sharedDirectories.data = { source = "/srv/data"; target = "/data"; };
  };
}) ]; }"""


def test_the_vm_variant_leaves_the_machine_alone_and_honours_its_vm_variant_settings() -> None:
    result = evaluate(
        f"""let
          machine = {MACHINE};
          variant = machine.extendModules {{
            modules = [ {ROOT}/nixos-modules/vm-variant.nix ];
          }};
        in {{
          vm = fromNixos {{ configuration = machine; name = "web"; }};
          overridden = fromNixos {{
            configuration = machine; name = "web";
            modules = [ {{ virtualisation.graphics = true; }} ];
          }};
          machine = {{
            inherit (machine.config) swapDevices;
            root = machine.config.fileSystems."/";
            grub = machine.config.boot.loader.grub.device;
            agent = machine.config.services.qemuGuest.enable;
          }};
          variant = {{
            root = variant.config.fileSystems."/";
            store = variant.config.fileSystems."/nix/.ro-store";
            boot = variant.config.fileSystems ? "/boot";
            agent = variant.config.services.qemuGuest.enable;
          }};
        }}"""
    )
    vm, machine, variant = result["vm"], result["machine"], result["variant"]
    # The machine itself: its own file systems, swap and boot loader.
    assert machine["root"]["device"] == "/dev/sda2" and machine["root"]["fsType"] == "btrfs"
    assert machine["grub"] == "/dev/sda" and machine["swapDevices"] == [{"device": "/dev/sda3"}]
    assert machine["agent"] is False
    # Its VM variant: qemu-vm.nix's file systems win, the guest agent runs.
    assert variant["root"]["device"] == "/dev/disk/by-label/nixos" and not variant["boot"]
    assert variant["store"]["fsType"] == "9p" and "msize=16384" in variant["store"]["options"]
    assert variant["agent"] is True
    # The definition honours virtualisation.vmVariant.
    assert (vm["cpus"], vm["memory"], vm["diskSize"]) == (3, 3072, 2048)
    assert vm["network"]["forwardPorts"] == [{"protocol": "tcp", "hostPort": 2222, "guestPort": 22}]
    assert vm["shares"]["data"]["source"] == "/srv/data"
    assert vm["nixosConfiguration"] == "web" and vm["graphics"] is False
    assert vm["kernel"].endswith("-nixos-system-web/kernel")
    assert "console=ttyS0,115200n8" in vm["append"].split()
    assert result["overridden"]["graphics"] is True


def test_the_guest_module_derives_the_definition_without_changing_the_machine() -> None:
    result = evaluate(
        f"""let machine = nixosSystem {{ modules = [ {ROOT}/nixos-modules/guest.nix {{
          networking.hostName = "db";
          fileSystems."/" = {{ device = "/dev/sda2"; fsType = "xfs"; }};
          virtualisation.vmVariant.virtualisation.memorySize = 2048;
        }} ]; }};
        in {{
          inherit (machine.config.clanVm.definition) memory nixosConfiguration;
          root = machine.config.fileSystems."/".fsType;
        }}"""
    )
    assert result == {"memory": 2048, "nixosConfiguration": "db", "root": "xfs"}
    with pytest.raises(AssertionError, match=r"virtualisation\.vmVariant\.virtualisation"):
        evaluate(
            f"""(nixosSystem {{ modules = [ {ROOT}/nixos-modules/guest.nix
              {{ clanVm.memory = 1024; }} ]; }}).config.clanVm.definition.kernel"""
        )


def test_sshd_in_the_vm_variant_only_when_asked_and_key_login_only() -> None:
    result = evaluate(
        f"""let
          machine = {MACHINE};
          variant = sshd: (machine.extendModules {{
            modules = [ {ROOT}/nixos-modules/vm-variant.nix {{ clanVm.sshd = sshd; }} ];
          }}).config.services.openssh;
        in {{
          on = variant true;
          off = (variant false).enable;
          machine = machine.config.services.openssh.enable;
        }}"""
    )
    assert result["on"]["enable"] is True
    assert result["on"]["settings"] == {
        "PasswordAuthentication": False,
        "KbdInteractiveAuthentication": False,
    }
    assert result["off"] is False and result["machine"] is False


FLAKE = """{
  inputs.flake-parts.url = "path:%(flake_parts)s";
  inputs.nixpkgs-lib.url = "path:%(nixpkgs_lib)s";
  inputs.flake-parts.inputs.nixpkgs-lib.follows = "nixpkgs-lib";
  outputs = inputs@{ self, flake-parts, nixpkgs-lib, ... }:
    let
      inherit (nixpkgs-lib) lib;
      pkgs = import ./fake-nixos/pkgs.nix {
        busybox = "${self}/busybox"; kernel = "${self}/vmlinuz"; initrd = "${self}/initrd";
      };
      nixosSystem = import ./fake-nixos { inherit lib pkgs; };
    in
    flake-parts.lib.mkFlake { inherit inputs; } {
      systems = [ "x86_64-linux" ];
      imports = [ (import ./flake-module.nix { packages.x86_64-linux.default = "/unused"; }) ];
      flake.nixosConfigurations.web = nixosSystem { modules = [ {
        networking.hostName = "web";
        fileSystems."/" = { device = "/dev/sda2"; fsType = "btrfs"; };
        virtualisation.vmVariant.virtualisation.forwardPorts = [
          { host.port = 2222; guest.port = 22; }
        ];
      } ]; };
      flake.nixosConfigurations.arm = nixosSystem { system = "aarch64-linux"; modules = [ ]; };
      flake.nixosConfigurations.broken = nixosSystem { modules = [ {
        virtualisation.vmVariant.virtualisation.memorySize = "lots";
      } ]; };
      perSystem = { ... }: {
        clanVmsRunner.tool = "clan-vm-manager";
        clanVmsRunner.writeScript = name: text: builtins.toFile name text;
        clanVmsFromNixos.enable = true;
        clanVms.web = { memory = 256; bootTest.expect = "%(ready)s"; };
      };
    };
}
"""


@pytest.fixture
def nixos_flake(tmp_path: Path, guest: Guest) -> Path:
    if not FLAKE_PARTS:
        pytest.skip("set CLAN_VM_TEST_FLAKE_PARTS to a flake-parts checkout")
    directory = tmp_path / "vms"
    directory.mkdir()
    copy_module(directory)
    shutil.copytree(ROOT / "tests" / "nix" / "fake-nixos", directory / "fake-nixos")
    shutil.copy(guest.kernel, directory / "vmlinuz")
    shutil.copy(guest.initrd, directory / "initrd")
    shutil.copy("/bin/busybox", directory / "busybox")
    (directory / "flake.nix").write_text(
        FLAKE % {"flake_parts": FLAKE_PARTS, "nixpkgs_lib": NIXPKGS_LIB, "ready": READY}
    )
    skip_without_git_flakes()
    git(directory, "init", "-q")
    git(directory, "add", "-A")
    git(directory, "commit", "-qm", "vms")
    return directory


def test_nixos_configurations_become_vms_for_their_system(nixos_flake: Path) -> None:
    names = nix_eval(nixos_flake, f"clanVms.{SYSTEM}", apply="builtins.attrNames")
    assert names == ["broken", "web"]  # not "arm": another system
    web = nix_eval(nixos_flake, f"clanVms.{SYSTEM}.web")
    assert web["memory"] == 256 and web["cpus"] == 1  # clanVms.web wins, qemu-vm.nix's default
    assert web["nixosConfiguration"] == "web"
    assert web["network"]["forwardPorts"] == [
        {"protocol": "tcp", "hostPort": 2222, "guestPort": 22, "guestAddress": None}
    ]


def test_sshd_asked_in_clan_vms_reaches_the_nixos_system_and_forwards_port_22(
    nixos_flake: Path,
) -> None:
    web = f"clanVms.{SYSTEM}.web"
    plain = nix_eval(nixos_flake, web)
    text = (nixos_flake / "flake.nix").read_text()
    # Without a forward of port 22 in the machine's VM variant, sshd gets an auto port.
    text = text.replace("{ host.port = 2222; guest.port = 22; }", "")
    text = text.replace("clanVms.web = {", "clanVms.web = { sshd = true;")
    (nixos_flake / "flake.nix").write_text(text)
    git(nixos_flake, "commit", "-qam", "sshd")
    asked = nix_eval(nixos_flake, web)
    assert asked["sshd"] is True and plain["sshd"] is False
    assert asked["network"]["forwardPorts"] == [
        {"protocol": "tcp", "hostPort": "auto", "guestPort": 22, "guestAddress": None}
    ]
    # Another system: the VM variant was evaluated with sshd on.
    system = [w for w in asked["append"].split() if w.startswith("init=")]
    assert system and system != [w for w in plain["append"].split() if w.startswith("init=")]


def test_graphics_asked_in_clan_vms_reaches_the_vm_variant_and_its_consoles(
    nixos_flake: Path,
) -> None:
    web = f"clanVms.{SYSTEM}.web"
    plain = nix_eval(nixos_flake, web)
    text = (nixos_flake / "flake.nix").read_text()
    (nixos_flake / "flake.nix").write_text(
        text.replace("clanVms.web = {", "clanVms.web = { graphics = true;")
    )
    git(nixos_flake, "commit", "-qam", "graphics")
    asked = nix_eval(nixos_flake, web)
    assert asked["graphics"] is True and plain["graphics"] is False
    # qemu-vm.nix's consoles follow: with a display, tty0 is the primary (last) console.
    assert plain["append"].split()[-1] == "console=ttyS0,115200n8"
    assert asked["append"].split()[-2:] == ["console=ttyS0,115200n8", "console=tty0"]


def test_a_missing_or_refused_nixos_configuration_is_named_in_the_list(
    ncli: NixCLI, nixos_flake: Path
) -> None:
    text = (nixos_flake / "flake.nix").read_text()
    text = text.replace(
        "clanVms.web = {",
        'clanVms.ghost.nixosConfiguration = "nope";\n        clanVms.web = {',
    )
    text = text.replace(
        "flake.nixosConfigurations.arm =",
        "flake.nixosConfigurations.boots = nixosSystem { modules = [ {\n"
        "        virtualisation.vmVariant.virtualisation.useBootLoader = true;\n"
        "      } ]; };\n      flake.nixosConfigurations.arm =",
    )
    (nixos_flake / "flake.nix").write_text(text)
    git(nixos_flake, "commit", "-qam", "ghost")
    listed = json.loads(ncli.ok("list", "--flake", str(nixos_flake), "--json").out)
    errors = {row["name"]: row["eval_error"] for row in listed}
    # Under the option that names it, not under an attribute derived from it.
    assert errors["ghost"].startswith(
        f"nix evaluation of clanVms.{SYSTEM}.ghost.nixosConfiguration failed: "
        'clanVms.ghost.nixosConfiguration = "nope": the flake has no nixosConfigurations.nope'
    )
    # A VM variant the tool cannot run: the VM, and the qemu-vm.nix option, are named.
    assert errors["boots"].startswith(
        f"nix evaluation of clanVms.{SYSTEM}.boots failed: the VM variant of nixos cannot be "
        "run by clan-vm-manager: virtualisation.useBootLoader = true: "
    )
    assert errors["web"] is None
    refused = ncli.run("start", "boots", "--flake", str(nixos_flake))
    assert refused.code == 1 and "virtualisation.useBootLoader = true" in refused.err
    assert json.loads(ncli.ok("list", "--json").out) == []


@pytest.mark.vm
def test_a_nixos_vm_is_built_rooted_created_with_its_file_system_and_booted(
    ncli: NixCLI, nixos_flake: Path
) -> None:
    flake = str(nixos_flake)
    text = (nixos_flake / "flake.nix").read_text()
    # A host port free now (a fixed one may be another's), two empty disks, the second
    # smaller, and a restricted network, in the machine's variant.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = text.replace("host.port = 2222;", f"host.port = {port};")
    (nixos_flake / "flake.nix").write_text(
        text.replace(
            "virtualisation.vmVariant.virtualisation.forwardPorts = [",
            "virtualisation.vmVariant.virtualisation.emptyDiskImages = [ 24 8 ];\n"
            "        virtualisation.vmVariant.virtualisation.restrictNetwork = true;\n"
            "        virtualisation.vmVariant.virtualisation.forwardPorts = [",
        )
    )
    git(nixos_flake, "commit", "-qam", "disks")
    listed = json.loads(ncli.ok("list", "--flake", flake, "--json").out)
    rows = {row["name"]: row for row in listed}
    assert rows["web"]["eval_error"] is None and rows["web"]["state"] == "not-created"
    assert rows["web"]["forwards"] == [f"tcp:127.0.0.1:{port}->22"]  # declared, not created yet
    assert "memorySize" in rows["broken"]["eval_error"]  # one broken VM, listed as such
    created = ncli.ok("create", "web", "--flake", flake)
    assert f"created VM 'web' from {flake}" in created.err
    shown = json.loads(ncli.ok("show", "web", "--json").out)
    config = shown["config"]
    # Everything the definition refers to is built and rooted: the system (append's init=),
    # the Nix database registration (regInfo=), the kernel and initrd.
    roots = {os.path.realpath(p) for p in (ncli.state_dir / "gcroots" / "web").glob("*/result*")}
    init = next(w for w in config["append"].split() if w.startswith("init="))[5:]
    reg_info = next(w for w in config["append"].split() if w.startswith("regInfo="))[8:]
    assert str(Path(init).parent) in roots and str(Path(reg_info).parent) in roots
    assert Path(reg_info).read_text().splitlines() == [str(Path(init).parent)]
    # The root disk carries the file system NixOS' VM variant mounts by label.
    disk = Path(shown["disks"][0]["path"])
    raw = ncli.state_dir.parent / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, raw], check=True)
    blkid = subprocess.run(["blkid", "-o", "export", raw], capture_output=True, text=True)
    assert "LABEL=nixos" in blkid.stdout and "TYPE=ext4" in blkid.stdout
    raw.unlink()
    assert (Path(shown["directory"]) / "shares" / "xchg").is_dir()
    # QEMU takes the 9p shares (the store read-only); the stand-in system boots the test guest.
    ncli.ok("start", "web", "--wait-for", READY, "--timeout", "120")
    pid = json.loads(ncli.ok("status", "web", "--json").out)["pid"]
    words = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    # The store as the launch opened it (QEMU looks up no name of a shared directory).
    store = next(w for w in words if w.startswith("local,id=fs-nix-store,path=/proc/self/fd/"))
    assert store.endswith(",security_model=none,readonly=on")
    fd = store.split("/proc/self/fd/")[1].split(",")[0]
    assert os.path.realpath(f"/proc/{pid}/fd/{fd}") == os.path.realpath("/nix/store")
    # As qemu-vm.nix: the root drive's serial, a random number generator, restrict=on.
    assert "virtio-blk-pci,drive=disk0,serial=root,bootindex=1" in words
    assert "virtio-rng-pci,id=rng0" in words
    assert f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22,restrict=on" in words
    # The guest sees the empty disks after its root disk, in the list's order.
    console = ncli.ok("console", "web", "--log").out
    disks = [line.split()[2:4] for line in console.splitlines() if "clan-guest: disk" in line]
    assert disks == [["vda", "1024"], ["vdb", "24"], ["vdc", "8"]]
    ncli.ok("stop", "web")


FAKE_NIXPKGS = """{
  # nixpkgs as the template uses it, without nixpkgs: nixpkgs.lib, and lib.nixosSystem made
  # by the stand-in of tests/nix/fake-nixos.
  inputs.nixpkgs-lib.url = "path:%(nixpkgs_lib)s";
  outputs = { self, nixpkgs-lib }: {
    lib = nixpkgs-lib.lib // {
      nixosSystem = import ./fake-nixos {
        inherit (nixpkgs-lib) lib;
        pkgs = import ./fake-nixos/pkgs.nix {
          busybox = "/bin/busybox"; kernel = "/boot/kernel"; initrd = "/boot/initrd";
        };
      };
    };
  };
}
"""
TOOL_FILES = ["flake.nix", "flake.lock", "flake-module.nix", "lib", "nixos-modules", "nix"]


def test_the_template_needs_one_override_per_input_and_becomes_a_vm(tmp_path: Path) -> None:
    if not FLAKE_PARTS:
        pytest.skip("set CLAN_VM_TEST_FLAKE_PARTS to a flake-parts checkout")
    fake = tmp_path / "nixpkgs"
    shutil.copytree(ROOT / "tests" / "nix" / "fake-nixos", fake / "fake-nixos")
    (fake / "flake.nix").write_text(FAKE_NIXPKGS % {"nixpkgs_lib": NIXPKGS_LIB})
    tool = tmp_path / "clan-vm-tasks"
    tool.mkdir()
    for name in TOOL_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tool / name)
        elif source.exists():
            shutil.copy(source, tool / name)
    shutil.copytree(ROOT / "templates", tool / "templates")
    mine = tmp_path / "mine"
    shutil.copytree(ROOT / "templates" / "default", mine)
    (mine / "keys" / "alice.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI alice\n")
    skip_without_git_flakes()
    git(mine, "init", "-q")
    git(mine, "add", "-A")
    overrides = ["--override-input", "nixpkgs", f"path:{fake}"]
    overrides += ["--override-input", "flake-parts", f"path:{FLAKE_PARTS}"]
    overrides += ["--override-input", "clan-vm-tasks", f"path:{tool}"]

    def nix(*args: str) -> Any:
        argv = ["nix", "--extra-experimental-features", "nix-command flakes"]
        argv += ["--option", "substituters", "", *args, *overrides]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    locked = nix("flake", "metadata", "--json", str(mine))["locks"]["nodes"]
    # One nixpkgs and one flake-parts: every nested input follows (the fake's own nixpkgs-lib
    # is the only other node).
    assert sorted(locked) == ["clan-vm-tasks", "flake-parts", "nixpkgs", "nixpkgs-lib", "root"]
    assert locked["clan-vm-tasks"]["inputs"] == {
        "flake-parts": ["flake-parts"],
        "nixpkgs": ["nixpkgs"],
    }
    assert locked["flake-parts"]["inputs"] == {"nixpkgs-lib": ["nixpkgs"]}
    web = nix("eval", "--json", f"{mine}#clanVms.{SYSTEM}.web")
    assert web["nixosConfiguration"] == "web"
    assert (web["cpus"], web["memory"], web["diskSize"]) == (2, 1024, 4096)
    assert web["network"]["forwardPorts"] == [
        {"protocol": "tcp", "hostPort": "auto", "guestPort": 22, "guestAddress": None}
    ]
    assert web["rootFilesystem"] == {"type": "ext4", "label": "nixos"}
    keys = nix(
        "eval", "--json", f"{mine}#nixosConfigurations.web.config.users.users.root",
        "--apply", "root: map builtins.baseNameOf root.openssh.authorizedKeys.keyFiles",
    )  # fmt: skip
    assert keys == ["alice.pub"]


def test_the_vm_of_a_clan_machine_is_that_machine(
    ncli: NixCLI, nixos_flake: Path, tmp_path: Path
) -> None:
    clan = tmp_path / "clan"
    clan.mkdir()
    inventory = {"machines": {"web": {"name": "web", "deploy": {"targetHost": "root@web"}}}}
    (clan / "inventory.json").write_text(json.dumps(inventory, indent=2))
    created = ncli.ok("create", "web", "--flake", str(nixos_flake), "--clan-dir", str(clan))
    assert "'web' is the VM of the clan machine web, which needs no inventory entry" in created.err
    # Changed as a VM: no hint to deploy the machine (its boot loader, its file systems) into it.
    assert "change it with clan-vm-manager switch web (its VM variant)" in created.err
    assert "--target-host" not in created.err
    assert json.loads((clan / "inventory.json").read_text()) == inventory  # no second entry
    pushed = ncli.run("inventory", "push", "web", "--clan-dir", str(clan))
    assert pushed.code == 2 and "needs no inventory entry of its own" in pushed.err
    assert "clan-vm-manager switch web" in pushed.err and "--target-host" not in pushed.err
