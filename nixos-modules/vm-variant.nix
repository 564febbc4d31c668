# The module that makes a NixOS configuration's VM variant for clan-vm-manager, added with
# extendModules (lib/from-nixos.nix), the way nixpkgs' build-vm.nix makes
# virtualisation.vmVariant: the machine's own configuration is not changed.
#
# nixpkgs' qemu-vm.nix does the work, as for `nixos-rebuild build-vm`: the root file system
# by label (mkVMOverride: the machine's fileSystems, swap and LUKS devices do not apply in
# the VM), /nix/store shared over 9p at /nix/.ro-store with a writable overlay, the Nix
# database loaded from regInfo at boot, the boot loader not installed (direct kernel boot).
# On top of it: a serial console instead of a display, and sshd when asked (vm-sshd.nix).
# The result is system.build.clanVm, a clanVms definition (lib/nixos-to-vm.nix), or an
# evaluation error naming the qemu-vm.nix setting the tool cannot run (lib/qemu-vm-options.nix).
{ config, options, lib, modulesPath, ... }:
{
  imports = [ (modulesPath + "/virtualisation/qemu-vm.nix") ./vm-sshd.nix ];

  config = {
    # clan-vm-manager shows the serial console; clanVms.<name>.graphics (or this, in
    # virtualisation.vmVariant) gives the VM a display. qemu-vm.nix runs the guest agent
    # (virtualisation.qemu.guestAgent.enable) on the channel the tool gives the VM.
    virtualisation.graphics = lib.mkDefault false;

    system.build.clanVm = import ../lib/nixos-to-vm.nix { inherit lib; } { inherit config options; };
  };
}
