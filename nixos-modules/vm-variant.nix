# The module that makes a NixOS configuration's VM variant for clan-vm-manager, added with
# extendModules (lib/from-nixos.nix), the way nixpkgs' build-vm.nix makes
# virtualisation.vmVariant: the machine's own configuration is not changed.
#
# nixpkgs' qemu-vm.nix does the work, as for `nixos-rebuild build-vm`: the root file system
# by label (mkVMOverride: the machine's fileSystems, swap and LUKS devices do not apply in
# the VM), /nix/store shared over 9p at /nix/.ro-store with a writable overlay, the Nix
# database loaded from regInfo at boot, the boot loader not installed (direct kernel boot).
# On top of it: a serial console instead of a display, and the guest agent.
# The result is system.build.clanVm, a clanVms definition (lib/nixos-to-vm.nix).
{ config, lib, pkgs, modulesPath, ... }:
{
  imports = [ (modulesPath + "/virtualisation/qemu-vm.nix") ];

  options.clanVm.sshd = lib.mkOption {
    type = lib.types.bool;
    default = false;
    example = true;
    description = ''
      Run sshd in the VM for `clan-vm-manager ssh`: key login only (the tool puts its key
      into the user's ~/.ssh/authorized_keys through the guest agent). clanVms.<name>.sshd
      sets it.
    '';
  };

  config = lib.mkMerge [
    {
      # clan-vm-manager shows the serial console; clanVms.<name>.graphics (or this, in
      # virtualisation.vmVariant) gives the VM a display.
      virtualisation.graphics = lib.mkDefault false;

      # qemu-vm.nix enables it too; the tool gives every VM the org.qemu.guest_agent.0
      # channel that qemu-guest-agent.service waits for.
      services.qemuGuest.enable = lib.mkDefault true;

      system.build.clanVm = import ../lib/nixos-to-vm.nix { inherit lib; } { inherit config pkgs; };
    }
    (lib.mkIf config.clanVm.sshd {
      services.openssh = {
        enable = true;
        settings.PasswordAuthentication = lib.mkDefault false;
        settings.KbdInteractiveAuthentication = lib.mkDefault false;
      };
    })
  ];
}
