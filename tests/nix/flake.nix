# The offline test flake: no inputs, no nixpkgs. The test fixture copies it into a
# git repository together with a kernel, its modules, a static busybox, the guest's
# init scripts and ../../lib/apps.nix. The initrd is built by a derivation whose
# builder is that busybox.
{
  outputs = { self }:
    let
      system = "x86_64-linux";
      busybox = "${self}/busybox";
      initrd = derivation {
        name = "clan-test-initrd";
        inherit system;
        builder = busybox;
        args = [ "sh" "-e" "${self}/build-initrd.sh" ];
        src = self;
      };
      # An executable script without nixpkgs' writeShellScript.
      writeScript = name: text: derivation {
        inherit name system;
        builder = busybox;
        args = [ "sh" "-c" ''
          echo '#!${busybox} sh' > $out
          echo "$text" >> $out
          ${busybox} chmod +x $out
        '' ];
        inherit text;
      };
      guest = name: {
        cpus = 1;
        memory = 192;
        diskSize = 64;
        kernel = "${self}/vmlinuz";
        inherit initrd;
        append = "console=ttyS0 quiet no_timer_check clan.hostname=${name}";
        bootTest.expect = "clan-guest: READY";
      };
    in
    {
      clanVms.${system} = {
        alpha = guest "alpha";
        beta = guest "beta";
      };
      apps.${system} = import ./apps.nix {
        tool = "clan-vm-manager";
        inherit writeScript;
        flake = self;
      };
    };
}
