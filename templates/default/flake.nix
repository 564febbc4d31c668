{
  description = "My VMs, run by clan-vm-manager";

  # Every nested input follows the top-level one: one nixpkgs and one flake-parts in the
  # lock, and `--override-input NAME PATH` once per input (offline, or to pin a checkout).
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    flake-parts.url = "github:hercules-ci/flake-parts";
    flake-parts.inputs.nixpkgs-lib.follows = "nixpkgs";
    clan-vm-tasks.url = "github:clan-vm/clan-vm-tasks";
    clan-vm-tasks.inputs.nixpkgs.follows = "nixpkgs";
    clan-vm-tasks.inputs.flake-parts.follows = "flake-parts";
  };

  outputs = inputs@{ flake-parts, nixpkgs, clan-vm-tasks, ... }:
    flake-parts.lib.mkFlake { inherit inputs; } {
      systems = [ "x86_64-linux" ];
      imports = [ clan-vm-tasks.flakeModules.default ];

      # A machine as you would deploy it: nothing in it is about VMs.
      flake.nixosConfigurations.web = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [ ./configuration.nix ];
      };

      perSystem = { ... }: {
        # Every nixosConfiguration of this system is also a VM (its VM variant: the
        # machine's own file systems and boot loader stay as they are).
        clanVmsFromNixos.enable = true;
        # VM settings win over what the machine's virtualisation.vmVariant says.
        clanVms.web = {
          memory = 1024;
          # "auto": a free host port, the same one again while it stays free; parallel
          # boot tests never collide. `nix run .#vm-show -- web` says which.
          network.forwardPorts = [ { hostPort = "auto"; guestPort = 22; } ];
          bootTest.expect = "web login:";
          bootTest.timeout = 600;
        };
      };
    };
}
