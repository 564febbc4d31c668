# What the stand-in NixOS takes from nixpkgs: BUSYBOX as the builder, the KERNEL and INITRD
# the systems boot, and closureInfo (here: the paths, one a line, as "registration").
{ busybox, kernel, initrd, system ? "x86_64-linux" }:
{
  inherit busybox kernel initrd system;
  closureInfo = { rootPaths }: derivation {
    name = "closure-info";
    inherit system;
    builder = busybox;
    paths = map toString rootPaths;
    args = [ "sh" "-c" "${busybox} mkdir $out; for p in $paths; do echo $p >> $out/registration; done" ];
  };
}
