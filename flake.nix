{
  description = "clan-vm-tasks: QEMU VMs declared in Nix flakes, driven by invoke tasks";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    flake-parts.url = "github:hercules-ci/flake-parts";
    flake-parts.inputs.nixpkgs-lib.follows = "nixpkgs";
  };

  outputs = inputs@{ self, flake-parts, ... }:
    flake-parts.lib.mkFlake { inherit inputs; } ({ flake-parts-lib, ... }:
      let
        flakeModule = flake-parts-lib.importApply ./flake-module.nix self;
      in
      {
        systems = [ "x86_64-linux" "aarch64-linux" ];
        # Our own apps (nix run github:…#vm-start -- web) act on the flake around the cwd.
        imports = [ flakeModule ];

        flake = {
          flakeModules.default = flakeModule;
          # clanVms.web.nixosConfiguration = "web" (flake-parts), or by hand:
          #   clanVms.x86_64-linux.web = clan-vm-tasks.lib.fromNixos { configuration = nixosConfigurations.web; name = "web"; };
          lib.fromNixos = import ./lib/from-nixos.nix { inherit (inputs.nixpkgs) lib; };
          nixosModules.guest = ./nixos-modules/guest.nix;
          nixosModules.host = flake-parts-lib.importApply ./nixos-modules/host.nix self;
          templates.default = {
            path = ./templates/default;
            description = "A flake with one NixOS VM run by clan-vm-manager";
          };
        };

        perSystem = { pkgs, self', ... }: {
          packages.default = pkgs.python3Packages.callPackage ./nix/package.nix {
            inherit (pkgs) qemu nix e2fsprogs;
          };
          clanVmsRunner.flake = null;
          devShells.default = pkgs.mkShell {
            inputsFrom = [ self'.packages.default ];
            packages = [ pkgs.qemu pkgs.nix pkgs.busybox pkgs.ruff pkgs.mypy pkgs.python3Packages.pytest ];
          };
          checks = {
            package = self'.packages.default;
            # The bundled Nix files at least parse.
            nix-files = pkgs.runCommand "clan-vm-tasks-nix-files" { nativeBuildInputs = [ pkgs.nix ]; } ''
              for f in ${./flake-module.nix} ${./lib/apps.nix} ${./lib/per-system.nix} \
                       ${./lib/vm-options.nix} ${./lib/from-nixos.nix} ${./lib/nixos-to-vm.nix} \
                       ${./nixos-modules/guest.nix} ${./nixos-modules/vm-variant.nix} \
                       ${./nixos-modules/vm-sshd.nix} ${./lib/qemu-vm-options.nix} \
                       ${./nixos-modules/host.nix} ${./templates/default/flake.nix} \
                       ${./templates/default/configuration.nix}; do
                nix-instantiate --parse "$f" > /dev/null
              done
              touch $out
            '';
          };
        };
      });
}
