# flake-parts module: declare VMs as perSystem.clanVms.<name>; they appear as the flake
# output clanVms.<system>.<name>, and apps vm-start, vm-stop, ... run clan-vm-manager
# against this flake. The options mirror clan_vm_tasks/models.py (a test compares them).
# Imported with importApply, so it knows the flake that ships the tool.
localFlake:
{ lib, flake-parts-lib, self, ... }:
let
  inherit (lib) mkOption types;
  portForward = types.submodule {
    options = {
      protocol = mkOption { type = types.enum [ "tcp" "udp" ]; default = "tcp"; };
      # "auto": a free port chosen at each start.
      hostPort = mkOption { type = types.either (types.ints.between 1 65535) (types.enum [ "auto" ]); };
      guestPort = mkOption { type = types.ints.between 1 65535; };
    };
  };
  vm = { name, ... }: {
    options = {
      name = mkOption { type = types.str; default = name; description = "Name of the VM."; };
      cpus = mkOption { type = types.ints.between 1 256; default = 2; };
      memory = mkOption { type = types.ints.between 16 4194304; default = 2048; description = "MiB"; };
      diskSize = mkOption { type = types.ints.between 1 67108864; default = 20480; description = "MiB"; };
      kernel = mkOption {
        type = types.nullOr (types.either types.package types.str);
        default = null;
        description = "Kernel image (a derivation or a path) for direct kernel boot.";
      };
      initrd = mkOption { type = types.nullOr (types.either types.package types.str); default = null; };
      baseImage = mkOption {
        type = types.nullOr (types.either types.package types.str);
        default = null;
        description = "Read-only base image; the VM's disk is a copy-on-write overlay on it.";
      };
      append = mkOption { type = types.nullOr types.str; default = null; };
      machine = mkOption { type = types.strMatching "[A-Za-z0-9_.-]+"; default = "q35"; };
      accel = mkOption { type = types.enum [ "auto" "kvm" "tcg" ]; default = "auto"; };
      network = {
        # Which of bridge/tap/forwardPorts go with which mode is checked by the tool.
        mode = mkOption { type = types.enum [ "user" "nat" "bridge" "tap" "none" ]; default = "user"; };
        bridge = mkOption { type = types.nullOr (types.strMatching "[A-Za-z0-9_.-]{1,15}"); default = null; };
        tap = mkOption { type = types.nullOr (types.strMatching "[A-Za-z0-9_.-]{1,15}"); default = null; };
        # Unicast is checked by the tool only.
        mac = mkOption {
          type = types.nullOr (types.strMatching "[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}");
          default = null;
        };
        forwardPorts = mkOption { type = types.listOf portForward; default = [ ]; };
      };
      qemuArgs = mkOption { type = types.listOf types.str; default = [ ]; };
      bootTest = {
        expect = mkOption { type = types.nullOr types.str; default = null; };
        timeout = mkOption { type = types.ints.between 1 86400; default = 120; description = "seconds"; };
        checks = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Commands run in the booted guest through the guest agent; each must exit 0.";
        };
      };
      agent = mkOption {
        type = types.bool;
        default = true;
        description = "Give the VM a virtio-serial channel for the QEMU guest agent (exec, copy, ssh keys).";
      };
      sshUser = mkOption {
        type = types.strMatching "[a-z_][a-z0-9_-]{0,31}";
        default = "root";
        description = "The guest user whose authorized_keys get the VM's SSH key.";
      };
      host = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Run the VM on this libvirt host: a URI or a name from the settings file's hosts.";
      };
    };
  };
in
{
  options.perSystem = flake-parts-lib.mkPerSystemOption ({ config, pkgs, system, ... }: {
    options = {
      clanVms = mkOption {
        type = types.attrsOf (types.submodule vm);
        default = { };
        description = "QEMU VMs run by clan-vm-manager.";
      };
      clanVmsRunner = {
        tool = mkOption {
          type = types.str;
          default = "${localFlake.packages.${system}.default}/bin/clan-vm-manager";
          defaultText = "clan-vm-manager from the clan-vm-tasks flake";
          description = "The clan-vm-manager executable the apps run.";
        };
        writeScript = mkOption {
          type = types.functionTo (types.functionTo types.package);
          default = name: text: pkgs.writeShellScript name text;
          defaultText = "pkgs.writeShellScript";
          description = "Makes the apps' scripts.";
        };
        flake = mkOption {
          type = types.nullOr types.raw;
          default = self;
          defaultText = "this flake";
          description = "The flake the apps read clanVms from (null: the flake around the cwd).";
        };
      };
    };
    config.apps = import ./lib/apps.nix { inherit (config.clanVmsRunner) tool writeScript flake; };
  });
  # perSystem.clanVms becomes the flake output clanVms.<system>.
  config.transposition.clanVms = { };
}
