# Installs clan-vm-manager and prepares bridge networking for VMs with
# network.mode = "bridge": a bridge, and qemu-bridge-helper allowed to use it.
localFlake:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.clanVmHost;
in
{
  options.services.clanVmHost = {
    enable = lib.mkEnableOption "the clan-vm-manager VM host";
    package = lib.mkOption {
      type = lib.types.package;
      default = localFlake.packages.${pkgs.stdenv.hostPlatform.system}.default;
      defaultText = lib.literalExpression "clan-vm-tasks.packages.\${system}.default";
      description = "The clan-vm-tasks package.";
    };
    bridge = lib.mkOption {
      type = lib.types.str;
      default = "clan-br0";
      example = "br0";
      description = "The bridge VMs with network.mode = \"bridge\" join.";
    };
    address = lib.mkOption {
      type = lib.types.str;
      default = "10.231.0.1";
      example = "192.168.100.1";
      description = "The host's address on the bridge (a /24).";
    };
  };

  config = lib.mkIf cfg.enable {
    environment.systemPackages = [ cfg.package pkgs.qemu ];
    networking.bridges.${cfg.bridge}.interfaces = [ ];
    networking.interfaces.${cfg.bridge}.ipv4.addresses = [
      { inherit (cfg) address; prefixLength = 24; }
    ];
    # qemu-bridge-helper only attaches taps to bridges listed here.
    environment.etc."qemu/bridge.conf".text = "allow ${cfg.bridge}\n";
    security.wrappers.qemu-bridge-helper = {
      source = "${pkgs.qemu}/libexec/qemu-bridge-helper";
      owner = "root";
      group = "root";
      capabilities = "cap_net_admin+ep";
    };
  };
}
