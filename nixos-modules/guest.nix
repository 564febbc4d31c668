# nixosModules.guest: this machine as a clanVms definition, in config.clanVm.definition,
#   clanVms.web = self.nixosConfigurations.web.config.clanVm.definition;
# derived from a VM variant of the machine (extendModules, like virtualisation.vmVariant), so
# the machine itself is not changed: its file systems and boot loader stay as they are.
# With flakeModules.default, `clanVms.web.nixosConfiguration = "web"` (or
# clanVmsFromNixos.enable) does the same without this module and keeps VM settings in
# clanVms.web; here, VM settings go in virtualisation.vmVariant.virtualisation.*.
{ config, lib, options, extendModules, ... }:
let
  fromNixos = import ../lib/from-nixos.nix { inherit lib; };
  moved = option: lib.mkRemovedOptionModule [ "clanVm" option ]
    "Set it in virtualisation.vmVariant.virtualisation (cores, memorySize, diskSize), or in clanVms.<name> with clan-vm-tasks.flakeModules.default.";
in
{
  imports = map moved [ "cpus" "memory" "diskSize" ];

  options.clanVm.definition = lib.mkOption {
    type = lib.types.attrs;
    readOnly = true;
    default = fromNixos {
      configuration = { inherit config options extendModules; };
      name = config.networking.hostName;
    };
    defaultText = lib.literalExpression "clan-vm-tasks.lib.fromNixos { configuration = <this machine>; }";
    example = lib.literalExpression "{ cpus = 1; memory = 1024; kernel = \"/nix/store/...-nixos-system-web/kernel\"; }";
    description = "This machine's VM variant as a clanVms definition (read-only).";
  };
}
