# The perSystem options of flakeModules.default: clanVms (lib/vm-options.nix), the VMs derived
# from nixosConfigurations, and the flake apps (lib/apps.nix) with their runner.
# LOCALFLAKE is the clan-vm-tasks flake (its package is the default tool), SELF the user's.
{ lib, localFlake, self }:
{ config, pkgs, system, ... }:
let
  inherit (lib) mkOption types literalExpression;
  fromNixos = import ./from-nixos.nix { inherit lib; };
  nixosConfigurations = self.nixosConfigurations or { };
  hasNixos = name: nixosConfigurations ? ${name};
  # What clanVms.<name> sets that changes the guest: sshd, and graphics (the consoles).
  nixos = name: { sshd ? false, graphics ? null }:
    if hasNixos name then
      fromNixos {
        configuration = nixosConfigurations.${name};
        inherit name;
        modules = lib.optional sshd { clanVm.sshd = true; }
          ++ lib.optional (graphics != null) { virtualisation.graphics = lib.mkForce graphics; };
      }
    else
      throw "nixosConfiguration = \"${name}\": the flake has no nixosConfigurations.${name}";
  vmModule = import ./vm-options.nix { inherit lib nixos hasNixos; };

  # The configurations for this system (a clan's machines among them).
  systemOf = configuration:
    configuration.config.nixpkgs.hostPlatform.system or configuration.pkgs.stdenv.hostPlatform.system;
  derivable = lib.filter
    (name: !(builtins.elem name config.clanVmsFromNixos.exclude) && systemOf nixosConfigurations.${name} == system)
    (builtins.attrNames nixosConfigurations);
in
{
  options = {
    clanVms = mkOption {
      type = types.attrsOf (types.submodule vmModule);
      default = { };
      example = literalExpression ''
        {
          web = { nixosConfiguration = "web"; memory = 4096; };
          tiny = { kernel = ./vmlinuz; initrd = ./initrd; append = "console=ttyS0"; };
        }
      '';
      description = ''
        VMs run by clan-vm-manager; the flake output `clanVms.<system>.<name>`. See the
        options of one VM below.
      '';
    };
    clanVmsFromNixos = {
      enable = mkOption {
        type = types.bool;
        default = false;
        example = true;
        description = ''
          Declare a VM for every `nixosConfigurations.<name>` of the flake whose system is
          this one (in a clan: every clan machine), as
          `clanVms.<name>.nixosConfiguration = "<name>"`. Settings in `clanVms.<name>` win.
        '';
      };
      exclude = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "installer" ];
        description = "Configurations that get no VM.";
      };
    };
    clanVmsRunner = {
      tool = mkOption {
        type = types.str;
        default = "${localFlake.packages.${system}.default}/bin/clan-vm-manager";
        defaultText = literalExpression ''"''${clan-vm-tasks.packages.''${system}.default}/bin/clan-vm-manager"'';
        example = "clan-vm-manager";
        description = ''
          The clan-vm-manager the apps run: a path, or a command found on PATH (then the
          apps need no nixpkgs for the tool).
        '';
      };
      writeScript = mkOption {
        type = types.functionTo (types.functionTo types.package);
        default = name: text: pkgs.writeShellScript name text;
        defaultText = literalExpression "pkgs.writeShellScript";
        example = literalExpression ''
          name: text: builtins.derivation {
            inherit name text system;
            builder = "''${self}/busybox";  # a static busybox in the flake
            args = [ "sh" "-c" '''echo "#!/bin/sh" > $out; echo "$text" >> $out; ''${self}/busybox chmod +x $out''' ];
          }
        '';
        description = ''
          Makes the apps' scripts (NAME: TEXT: an executable). With `tool` on PATH and a
          script maker without nixpkgs, the apps need no nixpkgs at all.
        '';
      };
      flake = mkOption {
        type = types.nullOr types.raw;
        default = self;
        defaultText = literalExpression "self";
        example = null;
        description = ''
          The flake the apps use when they are not run inside a checkout of it (its store
          copy, read-only: nothing is written there). Inside the checkout (the flake around
          the working directory) the apps act on the checkout. `null`: always the flake
          around the working directory.
        '';
      };
    };
  };

  config = {
    apps = import ./apps.nix { inherit (config.clanVmsRunner) tool writeScript flake; };
    clanVms = lib.mkIf config.clanVmsFromNixos.enable (
      lib.genAttrs derivable (name: { nixosConfiguration = lib.mkDefault name; })
    );
  };
}
