# A NixOS VM variant's configuration (nixos-modules/vm-variant.nix: nixpkgs' qemu-vm.nix plus
# our defaults) as a clanVms definition: the VM qemu-vm.nix's run script would start,
#
#   -kernel TOPLEVEL/kernel -initrd INITRD
#   -append "KERNEL-PARAMS init=TOPLEVEL/init regInfo=REGINFO/registration console=..."
#   the root disk (serial "root"): ext4 labelled "nixos", formatted on the host at create
#   the empty disks, in order; the 9p shares (nix-store -> /nix/.ro-store under a writable
#   overlay; the run script's temporary directories become directories of the VM's own)
#   user networking with its forwards (and restrict=on), the guest agent's channel
#
# or, when a setting of qemu-vm.nix cannot be run, an evaluation error naming it and what to
# do. Which setting is honoured how, and which is refused, is decided in one table,
# lib/qemu-vm-options.nix; this file carries it out.
#
# A pure function of CONFIG and OPTIONS (the variant's); closureInfo comes from
# virtualisation.host.pkgs, as in qemu-vm.nix.
{ lib }:
{ config, options, ... }:
let
  inherit (lib) concatStringsSep mapAttrs listToAttrs imap0 hasPrefix filter concatMap splitString;
  vm = config.virtualisation;
  toplevel = config.system.build.toplevel;
  hostPkgs = vm.host.pkgs;
  qemuVm = import ./qemu-vm-options.nix { inherit lib; };
  table = qemuVm.decisions;

  # Every refusal of the table, as "virtualisation.OPTION WHY; WHAT TO DO".
  refusals = concatMap (path:
    let
      entry = table.${path};
      loc = splitString "." path;
      why = entry.refuse {
        value = lib.attrByPath loc null vm;
        cfg = vm;
        opt = lib.attrByPath loc { } options.virtualisation;
      };
    in
    lib.optional (entry ? refuse && why != null) "virtualisation.${path} ${why}"
  ) (builtins.attrNames table);

  # qemu.options: qemu-vm.nix's own entries are done here (the table refuses those it does
  # not know); those of anyone else become qemuArgs.
  userOptions = concatMap (d: d.value) (qemuVm.others options.virtualisation.qemu.options);
  qemuArgs = concatMap (o: filter (w: w != "") (splitString " " o)) userOptions;

  # Registered in the guest's Nix database at boot (boot.postBootCommands of qemu-vm.nix runs
  # nix-store --load-db on it), so nix works in the guest.
  # Not part of the toplevel's closure: the tool builds and roots it with the rest.
  regInfo = hostPkgs.closureInfo { rootPaths = vm.additionalPaths; };


  # The run script's temporary directories (shell words, refused otherwise) become
  # directories of the VM's own (source null). The store is shared read-only (the guest
  # writes to its overlay); a directory of the host stays writable, as in nixpkgs.
  share = tag: dir:
    {
      source = if hasPrefix "/" dir.source then dir.source else null;
      inherit (dir) target;
      readOnly = dir.source == builtins.storeDir;
      type = "9p";
      inherit (dir) securityModel;
    };

  forward = rule:
    {
      protocol = rule.proto;
      hostPort = rule.host.port;
      guestPort = rule.guest.port;
    } // lib.optionalAttrs (rule.guest.address != "") { guestAddress = rule.guest.address; };

  defaultRoot = vm.useDefaultFilesystems && vm.diskImage != null;

  definition = {
    cpus = vm.cores;
    memory = vm.memorySize;
    diskSize = vm.diskSize;
    kernel = "${toplevel}/kernel";
    initrd = vm.directBoot.initrd;
    append = concatStringsSep " " (
      config.boot.kernelParams
      ++ [ "init=${toplevel}/init" "regInfo=${regInfo}/registration" ]
      ++ map (c: "console=${c}") vm.qemu.consoles
    );
    rootFilesystem = if defaultRoot then { type = "ext4"; label = "nixos"; } else null;
    graphics = vm.graphics;
    agent = vm.qemu.guestAgent.enable;
    network = {
      restrict = vm.restrictNetwork;
      forwardPorts = map forward vm.forwardPorts;
    };
    shares = mapAttrs share vm.sharedDirectories;
    extraDisks = listToAttrs (
      imap0 (i: size: { name = "empty${toString i}"; value = { inherit size; }; }) vm.emptyDiskImages
    );
    inherit qemuArgs;
    bootTest.expect = "login:";
  };
in
if refusals == [ ] then definition
else throw "the VM variant of ${config.system.name} cannot be run by clan-vm-manager: ${concatStringsSep "; " refusals}"
