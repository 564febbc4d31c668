# A stand-in for nixpkgs' lib.nixosSystem where nixpkgs is not available (the tests): the
# same module system (nixpkgs.lib's evalModules, with extendModules), a few NixOS options
# (modules/base.nix), virtualisation.vmVariant made as build-vm.nix makes it, and
# modulesPath/virtualisation/qemu-vm.nix as a small stand-in of nixpkgs' (same option names,
# defaults and file systems). PKGS has what the modules use: closureInfo, the system's kernel
# and initrd, and a builder.
{ lib, pkgs }:
{ modules, system ? "x86_64-linux" }:
lib.evalModules {
  specialArgs = { modulesPath = ./modules; };
  modules = [
    ./modules/base.nix
    { _module.args.pkgs = pkgs; nixpkgs.hostPlatform.system = lib.mkDefault system; }
  ] ++ modules;
}
