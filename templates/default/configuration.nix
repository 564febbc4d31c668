# The machine "web". Its VM (nix run .#vm-start -- web) is a variant of exactly this
# configuration: the file systems and boot loader below are replaced in the VM only.
{ lib, ... }:
{
  networking.hostName = "web";
  system.stateVersion = "25.05";

  # The real machine's disk and boot loader (the VM boots its kernel directly and mounts a
  # disk of its own).
  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };

  # SSH with the public keys in ./keys (git add them: a flake sees only tracked files).
  services.openssh.enable = true;
  users.users.root.openssh.authorizedKeys.keyFiles =
    lib.filter (lib.hasSuffix ".pub") (lib.filesystem.listFilesRecursive ./keys);

  # Settings only the VM gets (nixos-rebuild build-vm reads them too).
  virtualisation.vmVariant.virtualisation = {
    cores = 2;
    diskSize = 4096;
  };
}
