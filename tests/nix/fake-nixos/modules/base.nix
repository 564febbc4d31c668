# The NixOS options the tests' configurations and clan-vm-tasks' VM variant use, with NixOS'
# types and defaults; system.build.toplevel and initialRamdisk are small derivations that
# record what they are built from (the file systems, the kernel parameters). The system's
# bin/switch-to-configuration, run in a guest, leaves a marker: it links /run/current-system
# to its system, as NixOS' activation does, appends "ACTION SYSTEM" to
# /run/switch-to-configuration.log, and exits with stand-in.switchExitCode.
{ config, lib, pkgs, extendModules, ... }:
let
  inherit (lib) mkOption types;
  fileSystem = types.submodule ({ name, ... }: {
    options = {
      mountPoint = mkOption { type = types.str; default = name; };
      device = mkOption { type = types.nullOr types.str; default = null; };
      fsType = mkOption { type = types.str; default = "auto"; };
      options = mkOption { type = types.listOf types.str; default = [ "defaults" ]; };
      neededForBoot = mkOption { type = types.bool; default = false; };
      autoFormat = mkOption { type = types.bool; default = false; };
      overlay = mkOption { type = types.attrsOf (types.either types.str (types.listOf types.str)); default = { }; };
    };
  });
  vmVariant = extendModules { modules = [ ./virtualisation/qemu-vm.nix ]; };
  # As NixOS: the system is not built while an assertion fails.
  failed = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  checked = value: if failed == [ ] then value else throw "Failed assertions:\n- ${lib.concatStringsSep "\n- " failed}";
  build = name: script: derivation {
    inherit name script;
    inherit (pkgs) system;
    builder = pkgs.busybox;
    args = [ "sh" "-c" script ];
  };
in
{
  options = {
    assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };
    fileSystems = mkOption { type = types.attrsOf fileSystem; default = { }; };
    swapDevices = mkOption { type = types.listOf types.attrs; default = [ ]; };
    boot.loader.grub.enable = mkOption { type = types.bool; default = true; };
    boot.loader.grub.device = mkOption { type = types.str; default = ""; };
    boot.loader.systemd-boot.enable = mkOption { type = types.bool; default = false; };
    boot.kernelParams = mkOption { type = types.listOf types.str; default = [ ]; };
    boot.initrd.availableKernelModules = mkOption { type = types.listOf types.str; default = [ ]; };
    boot.postBootCommands = mkOption { type = types.lines; default = ""; };
    networking.hostName = mkOption { type = types.str; default = "nixos"; };
    nixpkgs.hostPlatform.system = mkOption { type = types.str; };
    services.qemuGuest.enable = mkOption { type = types.bool; default = false; };
    services.openssh.enable = mkOption { type = types.bool; default = false; };
    services.openssh.settings = mkOption { type = types.attrsOf types.anything; default = { }; };
    users.users = mkOption {
      type = types.attrsOf (types.submodule {
        options.openssh.authorizedKeys.keyFiles = mkOption { type = types.listOf types.path; default = [ ]; };
      });
      default = { };
    };
    system.name = mkOption { type = types.str; default = config.networking.hostName; };
    system.stateVersion = mkOption { type = types.str; default = "25.05"; };
    system.boot.loader.initrdFile = mkOption { type = types.str; default = "initrd"; };
    system.build = mkOption { type = types.lazyAttrsOf types.raw; default = { }; };
    stand-in.switchExitCode = mkOption { type = types.int; default = 0; };
    virtualisation.vmVariant = mkOption {
      inherit (vmVariant) type;
      default = { };
      description = "as nixpkgs' build-vm.nix";
    };
  };

  config = {
    boot.kernelParams = [ "loglevel=4" ];
    system.build.initialRamdisk = build "initrd" ''
      ${pkgs.busybox} mkdir $out
      ${pkgs.busybox} cp ${pkgs.initrd} $out/initrd
      echo '${builtins.toJSON config.fileSystems}' > $out/fstab.json
    '';
    system.build.toplevel = checked (build "nixos-system-${config.system.name}" ''
      ${pkgs.busybox} mkdir $out
      ${pkgs.busybox} ln -s ${pkgs.kernel} $out/kernel
      ${pkgs.busybox} ln -s ${config.system.build.initialRamdisk}/initrd $out/initrd
      echo -n '${toString config.boot.kernelParams}' > $out/kernel-params
      echo -n '${lib.boolToString config.services.openssh.enable}' > $out/sshd
      echo '#!/bin/sh' > $out/init
      ${pkgs.busybox} mkdir $out/bin
      {
        echo '#!/bin/sh'
        echo 'echo "activating the configuration..." >&2'
        echo "ln -sfn $out /run/current-system"
        echo "echo \"\$1 $out\" >> /run/switch-to-configuration.log"
        echo "echo \"switched to $out (\$1)\""
        echo 'exit ${toString config.stand-in.switchExitCode}'
      } > $out/bin/switch-to-configuration
      ${pkgs.busybox} chmod +x $out/bin/switch-to-configuration
    '');
  };
}
