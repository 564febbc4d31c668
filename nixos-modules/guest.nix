# Makes a NixOS configuration bootable under clan-vm-manager (direct kernel boot of
# QEMU with a qcow2 virtio disk) and exposes it in the shape clanVms expects:
#   clanVms.web = nixosConfigurations.web.config.clanVm.definition;
{ config, lib, pkgs, ... }:
let
  cfg = config.clanVm;
  build = config.system.build;
in
{
  options.clanVm = {
    cpus = lib.mkOption { type = lib.types.ints.between 1 256; default = 2; };
    memory = lib.mkOption { type = lib.types.ints.between 16 4194304; default = 2048; };
    diskSize = lib.mkOption { type = lib.types.ints.between 1 67108864; default = 20480; };
    definition = lib.mkOption {
      type = lib.types.attrs;
      readOnly = true;
      description = "This machine as a clanVms definition.";
    };
  };

  config = {
    boot.loader.grub.enable = false;
    boot.kernelParams = [ "console=ttyS0,115200" ];
    boot.initrd.availableKernelModules = [
      "virtio_pci" "virtio_blk" "virtio_net" "virtio_rng" "9p" "9pnet_virtio"
    ];
    boot.initrd.kernelModules = [ "virtio_balloon" "virtio_console" ];
    # The qcow2 disk (the first virtio disk) starts empty: stage 1 formats it on first boot.
    fileSystems."/" = {
      device = "/dev/vda";
      fsType = "ext4";
      autoFormat = true;
    };
    # The system closure stays on the host (as with nixos-rebuild build-vm): the host's
    # /nix/store is shared read-only over 9p, see qemuArgs below.
    fileSystems."/nix/store" = {
      device = "nix-store";
      fsType = "9p";
      options = [ "trans=virtio" "version=9p2000.L" "cache=loose" "ro" ];
      neededForBoot = true;
    };
    # Graceful stop: the runner presses the ACPI power button; logind powers off on it
    # (its default HandlePowerKey), the button driver must be there to report it.
    boot.kernelModules = [ "button" ];

    clanVm.definition = {
      inherit (cfg) cpus memory diskSize;
      kernel = "${build.kernel}/${config.system.boot.loader.kernelFile}";
      initrd = "${build.initialRamdisk}/${config.system.boot.loader.initrdFile}";
      append = lib.concatStringsSep " " (
        [ "init=${build.toplevel}/init" ] ++ config.boot.kernelParams
      );
      qemuArgs = [
        "-virtfs"
        "local,path=/nix/store,security_model=none,mount_tag=nix-store,readonly=on"
      ];
      bootTest.expect = "login:";
    };
  };
}
