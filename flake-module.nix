# flake-parts module (flakeModules.default): declare VMs as perSystem.clanVms.<name> (or derive
# them from nixosConfigurations); they appear as the flake output clanVms.<system>.<name>, and
# the apps vm-start, vm-stop, ... run clan-vm-manager on them. The options are in
# lib/per-system.nix and lib/vm-options.nix (reference: docs/options.md).
# Imported with importApply, so it knows the flake that ships the tool.
localFlake:
{ lib, flake-parts-lib, self, ... }:
{
  options.perSystem = flake-parts-lib.mkPerSystemOption (
    import ./lib/per-system.nix { inherit lib localFlake self; }
  );
  # perSystem.clanVms becomes the flake output clanVms.<system>.
  config.transposition.clanVms = { };
}
