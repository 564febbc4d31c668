# What clan-vm-manager does with each option of nixpkgs' virtualisation/qemu-vm.nix (and of
# the modules it imports) in a NixOS machine's VM variant: the one table of these decisions.
#
#   decision  "honoured" (the tool does what qemu-vm.nix's run script would, as `how` says),
#             "honoured in the guest" (the option acts inside the NixOS system, which the
#             tool boots as it is), or "refused when ..." (the tool cannot do it)
#   how       what the tool does, for docs/options.md
#   refuse    { value, cfg, opt }: null when the setting can be run, else why not and what to
#             do (lib/nixos-to-vm.nix refuses the configuration with it, naming the option)
#
# The table is `decisions`, by option path under `virtualisation`. VALUE is the option's value, CFG config.virtualisation, OPT the option itself. Options only
# qemu-vm.nix sets are told from the user's by where they are defined (OPT's definitions).
# tests/nix/test_qemu_vm_options.py fails when this table and qemu-vm.nix's options (a list
# pinned from nixpkgs, and the tests' stand-in of the module) disagree.
{ lib }:
let
  inherit (lib) concatStringsSep filter hasSuffix;

  # Definitions that qemu-vm.nix itself made, and those of anyone else.
  ownFile = hasSuffix "/virtualisation/qemu-vm.nix";
  others = opt: filter (d: !ownFile d.file) (opt.definitionsWithLocations or [ ]);
  # An option set explicitly (above the priority of a declared default).
  isSet = opt: (opt.highestPrio or 1500) < 1500;

  honoured = how: { decision = "honoured"; inherit how; };
  guest = how: { decision = "honoured in the guest"; inherit how; };
  refusedWhenTrue = how: why: {
    decision = "refused when true";
    inherit how;
    refuse = { value, ... }: if value then why else null;
  };
  onlyWith = option: {
    decision = "honoured (unused)";
    how = "Used only with `${option}`, which is refused, as in qemu-vm.nix.";
  };
  removed = {
    decision = "refused (by nixpkgs)";
    how = "A removed option: NixOS' module system refuses it itself.";
  };
in
{
  # Definitions of an option made by anyone but qemu-vm.nix.
  inherit others;

  decisions = {
    additionalPaths = honoured ''
      Their closure is registered in the guest's Nix database at boot (`regInfo`, a
      `closureInfo` the tool builds and keeps with the rest).
    '';
    bios = {
      decision = "refused when set";
      how = "The VM boots with QEMU's own firmware (SeaBIOS), as without this option.";
      refuse = { value, ... }:
        if value == null then null
        else "is set: clan-vm-manager boots with QEMU's own firmware; remove it (or give -bios in clanVms.<name>.qemuArgs)";
    };
    bootDevice = removed;
    bootLoaderDevice = guest ''
      The boot loader's device in the guest. The root drive has the serial `root`, as in
      qemu-vm.nix, so the default `/dev/disk/by-id/virtio-root` exists.
    '';
    bootPartition = onlyWith "useBootLoader";
    cores = honoured "The VM's `cpus`.";
    diskImage = {
      decision = "honoured";
      how = ''
        A path: the VM's own disk in the state directory (`vms/NAME/disk.qcow2`) instead,
        as `NIX_DISK_IMAGE` would override it. `null`: the guest's root is a tmpfs, as in
        qemu-vm.nix (nothing persists); the VM keeps an empty disk it does not mount.
      '';
    };
    diskSize = {
      decision = "refused when \"auto\"";
      how = "The root disk's size (`diskSize`).";
      refuse = { value, ... }:
        if value == "auto" then
          "= \"auto\": qemu-vm.nix cannot size a VM's disk automatically either; give a size in MiB"
        else null;
    };
    diskSizeAutoSupported = guest "Internal: qemu-vm.nix sets it to false (see `diskSize`).";
    "directBoot.enable" = {
      decision = "refused when false";
      how = "The VM boots the system's kernel and initrd directly, as qemu-vm.nix does by default.";
      # Its default follows useBootLoader, which is refused itself.
      refuse = { value, opt, ... }:
        if value || !isSet opt then null
        else "= false: clan-vm-manager always boots the kernel directly (no firmware or boot loader boot); remove the setting";
    };
    "directBoot.initrd" = honoured "The VM's `initrd`.";
    "efi.OVMF" = onlyWith "useEFIBoot";
    "efi.firmware" = onlyWith "useEFIBoot";
    "efi.keepVariables" = onlyWith "useEFIBoot";
    "efi.variables" = onlyWith "useEFIBoot";
    efiVars = removed;
    emptyDiskImages = honoured ''
      Extra qcow2 disks `empty0`, `empty1`, ... of these sizes, attached after the root
      disk in the list's order (`/dev/vdb`, `/dev/vdc`, ...; also
      `/dev/disk/by-id/virtio-emptyN`), kept with the VM.
    '';
    fileSystems = guest ''
      qemu-vm.nix's file systems (the root by label, the host's store over 9p, the shared
      directories) replace the machine's in the VM.
    '';
    forwardPorts = {
      decision = "honoured";
      how = ''
        From the host: a forward from 127.0.0.1 (`host.address` "" or "127.0.0.1"; a
        forward never listens on other addresses) to `guest.port` at `guest.address` (or
        the guest's own address). From the guest (`guestfwd`): refused, as qemu-vm.nix
        runs `nc` through a shell on the host for each connection.
      '';
      refuse = { value, ... }:
        let
          fromGuest = filter (r: (r.from or "host") == "guest") value;
          elsewhere = filter (r: !(builtins.elem (r.host.address or "") [ "" "127.0.0.1" ])) value;
          rule = r: "${r.proto or "tcp"} ${r.host.address or ""}:${toString r.host.port} <-> ${r.guest.address or ""}:${toString r.guest.port}";
        in
        if fromGuest != [ ] then
          "has a rule from the guest (${rule (builtins.head fromGuest)}): qemu-vm.nix runs nc through a shell on the host for each connection, which clan-vm-manager does not do; reach the host from the guest at 10.0.2.2 (without restrictNetwork), or forward from the host"
        else if elsewhere != [ ] then
          "has a rule on host address ${(builtins.head elsewhere).host.address}: clan-vm-manager forwards from 127.0.0.1 only; leave host.address empty"
        else null;
    };
    graphics = honoured ''
      `true`: a display (virtio-vga with a virtio keyboard and a USB tablet, over SPICE:
      `show` names its socket) where qemu-vm.nix opens a window; `false`: none, the serial
      console only (as `-nographic`). The consoles follow from it (see `qemu.consoles`).
    '';
    "host.pkgs" = honoured "Its `closureInfo` makes `regInfo`.";
    installBootLoader = onlyWith "useBootLoader";
    interfaces = {
      decision = "refused when set";
      how = "Interfaces on virtual networks between VMs (the NixOS test driver's).";
      refuse = { value, ... }:
        if value == { } then null
        else "is set: clan-vm-manager gives the VM one network interface (clanVms.<name>.network), not interfaces on VLANs between VMs; remove it, or bridge VMs with network.mode = \"bridge\"";
    };
    memorySize = honoured "The VM's `memory`.";
    mountHostNixStore = honoured ''
      `true`: the host's store is shared read-only over 9p (the `nix-store` share, mounted
      at `/nix/.ro-store` under a writable overlay); `false`: it is not shared.
    '';
    msize = guest "The guest's 9p mount option; QEMU agrees to it.";
    pathsInNixDB = {
      decision = "honoured";
      how = "Renamed by nixpkgs to `additionalPaths`.";
    };
    persistBootDevice = removed;
    "qemu.consoles" = honoured ''
      `console=` on the kernel command line, in order (the last is the primary console):
      with `graphics` false, `ttyS0` is, where the tool's console and `--wait-for` read.
    '';
    "qemu.diskInterface" = {
      decision = "refused unless \"virtio\"";
      how = "The disks are virtio-blk.";
      refuse = { value, ... }:
        if value == "virtio" then null
        else "= \"${value}\": clan-vm-manager attaches disks over virtio only; remove the setting";
    };
    "qemu.drives" = {
      decision = "honoured";
      how = ''
        The drives qemu-vm.nix makes, in its order: the root disk first (serial `root`,
        `bootindex=1`, writeback cache; on a full host disk the VM pauses where qemu-vm.nix's
        `werror=report` gives the guest an I/O error), then the `emptyDiskImages`. A drive of
        one's own is refused (a host file as a disk).
      '';
      refuse = { opt, ... }:
        let mine = lib.concatMap (d: d.value) (others opt); in
        if mine == [ ] then null
        else "has a drive of its own (${(builtins.head mine).file or "?"}): clan-vm-manager attaches the root disk and emptyDiskImages only; declare an empty disk with emptyDiskImages (or clanVms.<name>.extraDisks), or attach a file with clanVms.<name>.qemuArgs";
    };
    "qemu.guestAgent.enable" = honoured ''
      `true`: the guest agent's channel (`org.qemu.guest_agent.0`); `false`: none (`agent`
      false: `exec`, `copy` and `ssh` say the guest has no agent).
    '';
    "qemu.networkingOptions" = {
      decision = "honoured";
      how = ''
        qemu-vm.nix's own (user networking with `forwardPorts` and `restrictNetwork`) are the
        VM's network. Options of one's own are refused: set `clanVms.<name>.network`.
      '';
      refuse = { opt, ... }:
        if others opt == [ ] then null
        else "is set: clan-vm-manager makes the VM's network itself; remove it and set clanVms.<name>.network (or forwardPorts, restrictNetwork)";
    };
    "qemu.options" = {
      decision = "honoured";
      how = ''
        qemu-vm.nix's own are done by the tool (direct boot, `-nographic`, the keyboard and
        tablet of the display). Options of one's own become `qemuArgs`, split into words
        (from a flake they need `--allow-qemu-args`); one that needs a shell to be read (`$`,
        quotes, `\`, globs, ...) is refused.
      '';
      refuse = { opt, ... }:
        let
          defs = opt.definitionsWithLocations or [ ];
          mine = lib.concatMap (d: d.value) (others opt);
          shelly = filter (o: builtins.match "[A-Za-z0-9 ,=:/._+@%-]*" o == null) mine;
          # What qemu-vm.nix adds that the tool does itself; anything else it adds comes from
          # an option refused above, or from a qemu-vm.nix newer than this table.
          done = o: builtins.any (p: lib.hasPrefix p o) [ "-kernel " "-initrd " "-append " ]
            || builtins.elem o [
              "-nographic" "-device virtio-keyboard" "-usb" "-device usb-tablet,bus=usb-bus.0"
              "-device virtio-gpu-pci" "-device usb-ehci,id=usb0" "-device usb-kbd" "-device usb-tablet"
            ];
          unknown = filter (o: !done o) (lib.concatMap (d: d.value) (filter (d: ownFile d.file) defs));
        in
        if shelly != [ ] then
          "has \"${builtins.head shelly}\", which needs a shell to be read: clan-vm-manager runs QEMU without one; write it as plain words (or in clanVms.<name>.qemuArgs)"
        else if unknown != [ ] then
          "has \"${builtins.head unknown}\" from qemu-vm.nix, which clan-vm-manager does not know how to run; remove the setting that adds it"
        else null;
    };
    "qemu.package" = {
      decision = "refused when set";
      how = "The VM runs this host's `qemu-system-x86_64`.";
      refuse = { opt, ... }:
        if isSet opt then
          "is set: clan-vm-manager runs this host's qemu-system-x86_64, not a QEMU of the flake; remove the setting"
        else null;
    };
    "qemu.virtioKeyboard" = {
      decision = "refused when false with graphics";
      how = "With `graphics`, the display has a virtio keyboard; without, there is no display to type on.";
      refuse = { value, cfg, ... }:
        if value || !cfg.graphics then null
        else "= false: the display clan-vm-manager gives a VM with graphics has a virtio keyboard; remove the setting";
    };
    resolution = guest "The display's resolution in the guest (X11, the boot loader).";
    restrictNetwork = honoured ''
      `network.restrict`: QEMU's `restrict=on`, so the guest reaches neither the host nor
      the outside; forwards still work.
    '';
    rootDevice = guest ''
      The guest's root device. The tool formats the root disk ext4 with the label `nixos`
      when it creates the VM, as qemu-vm.nix does, which the default names.
    '';
    sharedDirectories = {
      decision = "honoured";
      how = ''
        A 9p share per tag with its `securityModel` (the store read-only, a host directory
        writable, as in qemu-vm.nix; from a flake, a host directory needs `--allow-shares`).
        The run script's own temporary directories (`"$TMPDIR"/xchg`, `$SHARED_DIR` or xchg
        for `shared`) become directories of the VM's own (`vms/NAME/shares/TAG`). Any other
        source that is not an absolute path (a shell word) is refused.
      '';
      refuse = { value, ... }:
        let
          runScript = [ ''"$TMPDIR"/xchg'' ''"''${SHARED_DIR:-$TMPDIR/xchg}"'' ''"$TMPDIR"/certs'' ];
          plain = s: builtins.match "/[^$\"'`\\\\]*" s != null;
          bad = filter (tag: !(plain value.${tag}.source || builtins.elem value.${tag}.source runScript))
            (builtins.attrNames value);
        in
        if bad == [ ] then null
        else "${builtins.head bad}.source = ${value.${builtins.head bad}.source}: a shell word, which only qemu-vm.nix's run script could read; give an absolute path";
    };
    "tpm.deviceModel" = onlyWith "tpm.enable";
    "tpm.enable" = refusedWhenTrue "The VM has no TPM."
      "= true: clan-vm-manager gives VMs no TPM (swtpm); remove the setting";
    "tpm.package" = onlyWith "tpm.enable";
    "tpm.provisioning" = onlyWith "tpm.enable";
    useBIOSBoot = onlyWith "useBootLoader";
    useBootLoader = refusedWhenTrue "The VM boots its kernel directly."
      "= true: clan-vm-manager boots the system's kernel directly and makes no disk image with a boot loader, so the guest would wait for a store that never comes; set it to false (nixos-rebuild build-vm-with-bootloader runs such a VM)";
    useDefaultFilesystems = honoured ''
      `true`: the root disk is formatted ext4, label `nixos`, when the VM is created;
      `false`: it starts empty (the configuration's own file systems).
    '';
    useEFIBoot = refusedWhenTrue "The VM boots without UEFI firmware."
      "= true: clan-vm-manager boots the kernel directly, without OVMF; set it to false";
    useHostCerts = refusedWhenTrue "The guest uses its own CA certificates."
      "= true: clan-vm-manager does not copy $NIX_SSL_CERT_FILE of the host into the VM; set it to false and add the certificates with security.pki.certificateFiles";
    useNixStoreImage = refusedWhenTrue "The guest reads the host's store over 9p."
      "= true: clan-vm-manager shares the host's store over 9p and makes no store image, so the guest would wait for a store that never comes; set it to false";
    useSecureBoot = refusedWhenTrue "The VM boots without UEFI firmware."
      "= true: clan-vm-manager boots the kernel directly, without Secure Boot firmware; set it to false";
    vlans = {
      decision = "refused unless [ 1 ] or [ ]";
      how = "The default, one virtual network: the VM's one network interface (`clanVms.<name>.network`).";
      refuse = { value, ... }:
        if builtins.elem value [ [ ] [ 1 ] ] then null
        else "= [ ${concatStringsSep " " (map toString value)} ]: clan-vm-manager gives the VM one network interface, not interfaces on VLANs between VMs; remove it, or bridge VMs with clanVms.<name>.network.mode = \"bridge\"";
    };
    writableStore = guest "The writable overlay over the host's store in the guest.";
    writableStoreUseTmpfs = guest "Where the guest keeps that overlay's writes.";
  };
}
