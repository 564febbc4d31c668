# A NixOS VM variant's configuration (nixos-modules/vm-variant.nix: nixpkgs' qemu-vm.nix plus
# our defaults) as a clanVms definition, booted the way qemu-vm.nix's own run script boots it:
#
#   -kernel TOPLEVEL/kernel -initrd INITRD
#   -append "KERNEL-PARAMS init=TOPLEVEL/init regInfo=REGINFO/registration console=..."
#   the root disk: ext4 labelled "nixos" (qemu-vm.nix mounts /dev/disk/by-label/nixos),
#     formatted on the host when the VM is created
#   9p shares for virtualisation.sharedDirectories (nix-store -> /nix/.ro-store, under a
#     writable overlay; xchg and shared, whose sources are the run script's temporary
#     directory, become directories of the VM's own)
#
# A pure function of CONFIG (and PKGS.closureInfo): tests/nix/test_nixos_vm.py calls it with a
# NixOS-shaped stand-in and nixpkgs.lib.
{ lib }:
{ config, pkgs }:
let
  inherit (lib) concatStringsSep mapAttrs listToAttrs imap0 hasPrefix hasInfix;
  vm = config.virtualisation;
  toplevel = config.system.build.toplevel;
  hostPkgs = vm.host.pkgs or pkgs;

  # Registered in the guest's Nix database at boot (boot.postBootCommands of qemu-vm.nix runs
  # nix-store --load-db on it), so nix works in the guest and the VM can be deployed to.
  # Not part of the toplevel's closure: the tool builds and roots it with the rest.
  regInfo = hostPkgs.closureInfo { rootPaths = vm.additionalPaths; };

  initrd = vm.directBoot.initrd
    or "${config.system.build.initialRamdisk}/${config.system.boot.loader.initrdFile}";

  consoles = vm.qemu.consoles or [ "tty0" "ttyS0,115200n8" ];

  # qemu-vm.nix's sources are shell words of its run script ("$TMPDIR"/xchg): those shares
  # become directories of the VM's own (source null). The store is shared read-only (the
  # guest writes to its overlay); a directory of the host stays writable, as in nixpkgs.
  share = tag: dir:
    let
      hostDir = hasPrefix "/" dir.source && !(hasInfix "$" dir.source) && !(hasInfix "\"" dir.source);
    in
    {
      source = if hostDir then dir.source else null;
      inherit (dir) target;
      readOnly = dir.source == builtins.storeDir;
      type = "9p";
      securityModel = dir.securityModel or "none";
    };

  forward = rule:
    if (rule.from or "host") != "host" then
      throw "virtualisation.forwardPorts: a rule from the guest (guestfwd) cannot be run by clan-vm-manager; forward from the host"
    else if !(builtins.elem (rule.host.address or "") [ "" "127.0.0.1" ]) then
      throw "virtualisation.forwardPorts: host address ${rule.host.address}: clan-vm-manager forwards from 127.0.0.1 only"
    else {
      protocol = rule.proto or "tcp";
      hostPort = rule.host.port;
      guestPort = rule.guest.port;
    };

  diskSize = if builtins.isInt vm.diskSize then vm.diskSize else 1024;
  defaultRoot = (vm.useDefaultFilesystems or true) && (vm.diskImage or "") != null;
in
{
  cpus = vm.cores;
  memory = vm.memorySize;
  inherit diskSize;
  kernel = "${toplevel}/kernel";
  inherit initrd;
  append = concatStringsSep " " (
    config.boot.kernelParams
    ++ [ "init=${toplevel}/init" "regInfo=${regInfo}/registration" ]
    ++ map (c: "console=${c}") consoles
  );
  rootFilesystem = if defaultRoot then { type = "ext4"; label = "nixos"; } else null;
  graphics = vm.graphics;
  network.forwardPorts = map forward vm.forwardPorts;
  shares = mapAttrs share vm.sharedDirectories;
  extraDisks = listToAttrs (
    imap0 (i: size: { name = "empty${toString i}"; value = { inherit size; }; }) (vm.emptyDiskImages or [ ])
  );
  bootTest.expect = "login:";
}
