# A small stand-in of nixpkgs' nixos/modules/virtualisation/qemu-vm.nix: the options
# clan-vm-tasks reads, with nixpkgs' names, types and defaults, and the file systems it
# overrides with mkVMOverride (priority 10): the root by label "nixos", the host's store over
# 9p at /nix/.ro-store under an overlay, every shared directory mounted in the initrd.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.virtualisation;
  mkVMOverride = lib.mkOverride 10;
  share = types.submodule {
    options = {
      source = mkOption { type = types.str; };
      target = mkOption { type = types.path; };
      securityModel = mkOption { type = types.enum [ "passthrough" "mapped-xattr" "mapped-file" "none" ]; default = "mapped-xattr"; };
    };
  };
  forward = types.submodule {
    options = {
      from = mkOption { type = types.enum [ "host" "guest" ]; default = "host"; };
      proto = mkOption { type = types.enum [ "tcp" "udp" ]; default = "tcp"; };
      host.address = mkOption { type = types.str; default = ""; };
      host.port = mkOption { type = types.port; };
      guest.address = mkOption { type = types.str; default = ""; };
      guest.port = mkOption { type = types.port; };
    };
  };
  mount9p = tag: dir: {
    name = dir.target;
    value = {
      device = tag;
      fsType = "9p";
      neededForBoot = true;
      options = [ "trans=virtio" "version=9p2000.L" "msize=${toString cfg.msize}" "x-systemd.requires=modprobe@9pnet_virtio.service" ]
        ++ lib.optional (tag == "nix-store") "cache=loose";
    };
  };
in
{
  options.virtualisation = {
    cores = mkOption { type = types.ints.positive; default = 1; };
    memorySize = mkOption { type = types.ints.positive; default = 1024; };
    diskSize = mkOption { type = types.either (types.enum [ "auto" ]) types.ints.positive; default = 1024; };
    diskImage = mkOption { type = types.nullOr types.str; default = "./${config.system.name}.qcow2"; };
    graphics = mkOption { type = types.bool; default = true; };
    msize = mkOption { type = types.ints.positive; default = 16384; };
    useDefaultFilesystems = mkOption { type = types.bool; default = true; };
    forwardPorts = mkOption { type = types.listOf forward; default = [ ]; };
    sharedDirectories = mkOption { type = types.attrsOf share; default = { }; };
    emptyDiskImages = mkOption { type = types.listOf types.ints.positive; default = [ ]; };
    additionalPaths = mkOption { type = types.listOf types.path; default = [ ]; };
    qemu.guestAgent.enable = mkOption { type = types.bool; default = true; };
    qemu.consoles = mkOption {
      type = types.listOf types.str;
      default = let serial = [ "ttyS0,115200n8" "tty0" ]; in if cfg.graphics then serial else lib.reverseList serial;
    };
    host.pkgs = mkOption { type = types.raw; default = pkgs; };
  };

  config = {
    virtualisation.sharedDirectories = {
      nix-store = { source = builtins.storeDir; target = "/nix/.ro-store"; securityModel = "none"; };
      xchg = { source = ''"$TMPDIR"/xchg''; target = "/tmp/xchg"; securityModel = "none"; };
      shared = { source = ''"''${SHARED_DIR:-$TMPDIR/xchg}"''; target = "/tmp/shared"; securityModel = "none"; };
    };
    virtualisation.additionalPaths = [ config.system.build.toplevel ];
    fileSystems = mkVMOverride ({
      "/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
      "/nix/store" = { overlay = { lowerdir = [ "/nix/.ro-store" ]; upperdir = "/nix/.rw-store/upper"; workdir = "/nix/.rw-store/work"; }; };
    } // lib.listToAttrs (lib.mapAttrsToList mount9p cfg.sharedDirectories));
    swapDevices = mkVMOverride [ ];
    boot.loader.grub.device = mkVMOverride "/dev/disk/by-id/virtio-root";
    boot.postBootCommands = ''
      if [[ "$(cat /proc/cmdline)" =~ regInfo=([^ ]*) ]]; then nix-store --load-db < ''${BASH_REMATCH[1]}; fi
    '';
    services.qemuGuest.enable = cfg.qemu.guestAgent.enable;
  };
}
