# A NixOS configuration (the result of lib.nixosSystem, e.g. a clan machine's
# nixosConfigurations.NAME) as a clanVms definition, without editing it:
#
#   clanVms.${system}.web = clan-vm-tasks.lib.fromNixos { configuration = self.nixosConfigurations.web; name = "web"; };
#
# The VM is a second evaluation of the configuration (extendModules), the way nixpkgs makes
# virtualisation.vmVariant: with nixos-modules/vm-variant.nix, then whatever the
# configuration itself says in virtualisation.vmVariant (its cores, memorySize, diskSize,
# forwardPorts, sharedDirectories, graphics, ...), then MODULES (VM-only overrides, as
# NixOS modules). The machine's own file systems and boot loader stay as they are.
{ lib }:
{ configuration, name ? null, modules ? [ ] }:
let
  vmVariant = configuration.options.virtualisation.vmVariant or null;
  definitions =
    if vmVariant == null then [ ]
    else vmVariant.definitionsWithLocations
      or (map (value: { file = "virtualisation.vmVariant"; inherit value; }) vmVariant.definitions);
  fromVmVariant = map (d: { _file = "${d.file} (virtualisation.vmVariant)"; imports = [ d.value ]; }) definitions;
  variant = configuration.extendModules {
    modules = [ ../nixos-modules/vm-variant.nix ] ++ fromVmVariant ++ modules;
  };
in
variant.config.system.build.clanVm // { nixosConfiguration = name; }
