{
  description = "My VMs, run by clan-vm-manager";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    flake-parts.url = "github:hercules-ci/flake-parts";
    clan-vm-tasks.url = "github:clan-vm/clan-vm-tasks";
    clan-vm-tasks.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs = inputs@{ flake-parts, nixpkgs, clan-vm-tasks, ... }:
    flake-parts.lib.mkFlake { inherit inputs; } ({ self, ... }: {
      systems = [ "x86_64-linux" ];
      imports = [ clan-vm-tasks.flakeModules.default ];

      flake.nixosConfigurations.web = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          clan-vm-tasks.nixosModules.guest
          {
            networking.hostName = "web";
            clanVm.memory = 1024;
            services.openssh.enable = true;
            users.users.root.initialPassword = "root";
            system.stateVersion = "25.05";
          }
        ];
      };

      perSystem = { ... }: {
        # nix run .#vm-start -- web    (or: invoke start web, clan-vm-manager start web)
        clanVms.web = self.nixosConfigurations.web.config.clanVm.definition // {
          network.forwardPorts = [ { hostPort = 2222; guestPort = 22; } ];
        };
      };
    });
}
