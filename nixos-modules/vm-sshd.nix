# clanVm.sshd, an option of the VM variant nixos-modules/vm-variant.nix makes: sshd in the VM
# for `clan-vm-manager ssh`, with key login only. clanVms.<name>.sshd sets it.
{ config, lib, ... }:
{
  options.clanVm.sshd = lib.mkOption {
    type = lib.types.bool;
    default = false;
    example = true;
    description = ''
      Run sshd in the VM variant for `clan-vm-manager ssh`: key login only (the tool puts
      its key into the user's `~/.ssh/authorized_keys` through the guest agent).
      `clanVms.<name>.sshd` sets it; in `virtualisation.vmVariant` it does the same. The
      machine itself is not changed.
    '';
  };

  config = lib.mkIf config.clanVm.sshd {
    services.openssh = {
      enable = true;
      settings.PasswordAuthentication = lib.mkDefault false;
      settings.KbdInteractiveAuthentication = lib.mkDefault false;
    };
  };
}
