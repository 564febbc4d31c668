# A stand-in of nixpkgs' nixos/modules/virtualisation/qemu-vm.nix, written for the tests
# (nixpkgs is not available where they run). It declares every option the real module
# declares (tests/nix/pinned/qemu-vm-options.json; tests/nix/test_qemu_vm_options.py checks
# that), with nixpkgs' names, and the types and defaults where the tests' stand-in NixOS can
# have them (packages are placeholders). What it defines itself, it defines as the real one
# does, in this file (its definitions are told from the user's by it): the file systems
# overridden with mkVMOverride (the root by label "nixos", the host's store over 9p at
# /nix/.ro-store under an overlay, every shared directory), the run script's shares, the
# drives (root, store image, empty disks), the networking options and the QEMU options
# (direct boot, -nographic, keyboard and tablet, firmware, TPM).
{ config, lib, pkgs, options, ... }:
let
  inherit (lib) mkOption mkIf mkMerge types optional optionals optionalString;
  cfg = config.virtualisation;
  mkVMOverride = lib.mkOverride 10;
  toplevel = config.system.build.toplevel;
  regInfo = cfg.host.pkgs.closureInfo { rootPaths = cfg.additionalPaths; };
  package = name: mkOption { type = types.raw; default = "${name}-placeholder"; };
  share = types.submodule {
    options = {
      source = mkOption { type = types.str; };
      target = mkOption { type = types.path; };
      securityModel = mkOption {
        type = types.enum [ "passthrough" "mapped-xattr" "mapped-file" "none" ];
        default = "mapped-xattr";
      };
    };
  };
  forward = types.submodule {
    options = {
      from = mkOption { type = types.enum [ "host" "guest" ]; default = "host"; };
      proto = mkOption { type = types.enum [ "tcp" "udp" ]; default = "tcp"; };
      host.address = mkOption { type = types.str; default = ""; };
      host.port = mkOption { type = types.port; };
      guest.address = mkOption { type = types.str; default = ""; };
      guest.port = mkOption { type = types.port; };
    };
  };
  drive = types.submodule {
    options = {
      file = mkOption { type = types.str; };
      driveExtraOpts = mkOption { type = types.attrsOf types.str; default = { }; };
      deviceExtraOpts = mkOption { type = types.attrsOf types.str; default = { }; };
      name = mkOption { type = types.nullOr types.str; default = null; };
    };
  };
  mount9p = tag: dir: {
    name = dir.target;
    value = {
      device = tag;
      fsType = "9p";
      neededForBoot = true;
      options = [ "trans=virtio" "version=9p2000.L" "msize=${toString cfg.msize}" "x-systemd.requires=modprobe@9pnet_virtio.service" ]
        ++ optional (tag == "nix-store") "cache=loose";
    };
  };
  hostForwards = lib.concatMapStrings (r:
    if r.from == "host" then "hostfwd=${r.proto}:${r.host.address}:${toString r.host.port}-${r.guest.address}:${toString r.guest.port},"
    else "'guestfwd=${r.proto}:${r.guest.address}:${toString r.guest.port}-cmd:nc ${r.host.address} ${toString r.host.port}',")
    cfg.forwardPorts;
in
{
  imports = [
    (lib.mkRenamedOptionModule [ "virtualisation" "pathsInNixDB" ] [ "virtualisation" "additionalPaths" ])
    (lib.mkRemovedOptionModule [ "virtualisation" "bootDevice" ] "renamed to virtualisation.rootDevice")
    (lib.mkRemovedOptionModule [ "virtualisation" "efiVars" ] "use virtualisation.efi.variables")
    (lib.mkRemovedOptionModule [ "virtualisation" "persistBootDevice" ] "the boot device is always persisted")
  ];

  options.virtualisation = {
    fileSystems = options.fileSystems;
    memorySize = mkOption { type = types.ints.positive; default = 1024; };
    msize = mkOption { type = types.ints.positive; default = 16384; };
    diskImage = mkOption { type = types.nullOr types.str; default = "./${config.system.name}.qcow2"; };
    bootLoaderDevice = mkOption { type = types.path; default = "/dev/disk/by-id/virtio-root"; };
    bootPartition = mkOption {
      type = types.nullOr types.path;
      default = if cfg.useEFIBoot then "/dev/disk/by-label/ESP" else if cfg.useBIOSBoot then "/dev/disk/by-label/BOOT" else null;
    };
    rootDevice = mkOption { type = types.nullOr types.path; default = "/dev/disk/by-label/nixos"; };
    emptyDiskImages = mkOption { type = types.listOf types.ints.positive; default = [ ]; };
    graphics = mkOption { type = types.bool; default = true; };
    resolution = mkOption { type = types.attrsOf types.ints.positive; default = { x = 1024; y = 768; }; };
    cores = mkOption { type = types.ints.positive; default = 1; };
    sharedDirectories = mkOption { type = types.attrsOf share; default = { }; };
    additionalPaths = mkOption { type = types.listOf types.path; default = [ ]; };
    forwardPorts = mkOption { type = types.listOf forward; default = [ ]; };
    restrictNetwork = mkOption { type = types.bool; default = false; };
    vlans = mkOption {
      type = types.listOf types.ints.unsigned;
      default = if cfg.interfaces == { } then [ 1 ] else [ ];
    };
    interfaces = mkOption {
      type = types.attrsOf (types.submodule {
        options.vlan = mkOption { type = types.ints.unsigned; };
        options.assignIP = mkOption { type = types.bool; default = false; };
      });
      default = { };
    };
    writableStore = mkOption { type = types.bool; default = cfg.mountHostNixStore; };
    writableStoreUseTmpfs = mkOption { type = types.bool; default = true; };
    host.pkgs = mkOption { type = types.raw; default = pkgs; };
    qemu = {
      package = package "qemu";
      options = mkOption { type = types.listOf types.str; default = [ ]; };
      consoles = mkOption {
        type = types.listOf types.str;
        default = let serial = [ "ttyS0,115200n8" "tty0" ]; in if cfg.graphics then serial else lib.reverseList serial;
      };
      networkingOptions = mkOption { type = types.listOf types.str; default = [ ]; };
      drives = mkOption { type = types.listOf drive; };
      diskInterface = mkOption { type = types.enum [ "virtio" "scsi" "ide" ]; default = "virtio"; };
      guestAgent.enable = mkOption { type = types.bool; default = true; };
      virtioKeyboard = mkOption { type = types.bool; default = true; };
    };
    useNixStoreImage = mkOption { type = types.bool; default = false; };
    mountHostNixStore = mkOption { type = types.bool; default = !cfg.useNixStoreImage && !cfg.useBootLoader; };
    directBoot.enable = mkOption { type = types.bool; default = !cfg.useBootLoader; };
    directBoot.initrd = mkOption {
      type = types.str;
      default = "${config.system.build.initialRamdisk}/${config.system.boot.loader.initrdFile}";
    };
    useBootLoader = mkOption { type = types.bool; default = false; };
    installBootLoader = mkOption { type = types.bool; default = cfg.useBootLoader && cfg.useDefaultFilesystems; };
    useBIOSBoot = mkOption { type = types.bool; default = false; };
    useEFIBoot = mkOption { type = types.bool; default = false; };
    efi = {
      OVMF = package "OVMF";
      firmware = mkOption { type = types.str; default = "${cfg.efi.OVMF}/FV/OVMF_CODE.fd"; };
      variables = mkOption { type = types.str; default = "${cfg.efi.OVMF}/FV/OVMF_VARS.fd"; };
      keepVariables = mkOption { type = types.bool; default = cfg.useBootLoader; };
    };
    tpm = {
      enable = mkOption { type = types.bool; default = false; };
      package = package "swtpm";
      deviceModel = mkOption { type = types.str; default = "tpm-tis"; };
      provisioning = mkOption { type = types.nullOr types.str; default = null; };
    };
    useDefaultFilesystems = mkOption { type = types.bool; default = true; };
    useSecureBoot = mkOption { type = types.bool; default = false; };
    bios = mkOption { type = types.nullOr types.raw; default = null; };
    useHostCerts = mkOption { type = types.bool; default = false; };
    # disk-size-option.nix
    diskSizeAutoSupported = mkOption { type = types.bool; default = true; internal = true; };
    diskSize = mkOption {
      type = types.either (types.enum [ "auto" ]) types.ints.positive;
      default = if cfg.diskSizeAutoSupported then "auto" else 1024;
    };
  };

  config = {
    virtualisation.diskSizeAutoSupported = false;
    virtualisation.additionalPaths = [ toplevel ];
    virtualisation.sharedDirectories = {
      nix-store = mkIf cfg.mountHostNixStore { source = builtins.storeDir; target = "/nix/.ro-store"; securityModel = "none"; };
      xchg = { source = ''"$TMPDIR"/xchg''; target = "/tmp/xchg"; securityModel = "none"; };
      shared = { source = ''"''${SHARED_DIR:-$TMPDIR/xchg}"''; target = "/tmp/shared"; securityModel = "none"; };
      certs = mkIf cfg.useHostCerts { source = ''"$TMPDIR"/certs''; target = "/etc/ssl/certs"; securityModel = "none"; };
    };
    virtualisation.qemu.networkingOptions = [
      "-net nic,netdev=user.0,model=virtio"
      "-netdev user,id=user.0,${hostForwards}${optionalString cfg.restrictNetwork "restrict=on,"}\"$QEMU_NET_OPTS\""
    ];
    virtualisation.qemu.options = mkMerge [
      (mkIf cfg.qemu.virtioKeyboard [ "-device virtio-keyboard" ])
      [ "-usb" "-device usb-tablet,bus=usb-bus.0" ]
      (mkIf cfg.directBoot.enable [
        "-kernel \${NIXPKGS_QEMU_KERNEL_${config.system.name}:-${toplevel}/kernel}"
        "-initrd ${cfg.directBoot.initrd}"
        ''-append "$(cat ${toplevel}/kernel-params) init=${toplevel}/init regInfo=${regInfo}/registration ${toString (map (c: "console=${c}") cfg.qemu.consoles)} $QEMU_KERNEL_PARAMS"''
      ])
      (mkIf cfg.useEFIBoot [
        "-drive if=pflash,format=raw,unit=0,readonly=on,file=${cfg.efi.firmware}"
        "-drive if=pflash,format=raw,unit=1,readonly=off,file=$NIX_EFI_VARS"
      ])
      (mkIf (cfg.bios != null) [ "-bios ${cfg.bios}/bios.bin" ])
      (mkIf (!cfg.graphics) [ "-nographic" ])
      (mkIf cfg.tpm.enable [
        "-chardev socket,id=chrtpm,path=\"$NIX_SWTPM_DIR\"/socket.ctrl"
        "-tpmdev emulator,id=tpm_dev_0,chardev=chrtpm"
        "-device ${cfg.tpm.deviceModel},tpmdev=tpm_dev_0"
      ])
    ];
    virtualisation.qemu.drives = mkMerge [
      (mkIf (cfg.diskImage != null) [ {
        name = "root";
        file = ''"$NIX_DISK_IMAGE"'';
        driveExtraOpts = { cache = "writeback"; werror = "report"; };
        deviceExtraOpts = { bootindex = "1"; serial = "root"; };
      } ])
      (mkIf cfg.useNixStoreImage [ {
        name = "nix-store";
        file = ''"$TMPDIR"/store.img'';
        deviceExtraOpts.bootindex = "2";
        driveExtraOpts.format = "raw";
      } ])
      (lib.imap0 (i: _: { file = "$(pwd)/empty${toString i}.qcow2"; driveExtraOpts.werror = "report"; }) cfg.emptyDiskImages)
    ];
    virtualisation.fileSystems = mkMerge [
      (lib.listToAttrs (lib.mapAttrsToList mount9p cfg.sharedDirectories))
      {
        "/" = mkIf cfg.useDefaultFilesystems (
          if cfg.diskImage == null then { device = "tmpfs"; fsType = "tmpfs"; options = [ "mode=755" ]; }
          else { device = cfg.rootDevice; fsType = "ext4"; });
        "/nix/store" = mkIf (cfg.useNixStoreImage || cfg.mountHostNixStore) (
          if cfg.writableStore then { overlay = { lowerdir = [ "/nix/.ro-store" ]; upperdir = "/nix/.rw-store/upper"; workdir = "/nix/.rw-store/work"; }; }
          else { device = "/nix/.ro-store"; options = [ "bind" ]; });
      }
    ];
    fileSystems = mkIf (cfg.fileSystems != { }) (mkVMOverride cfg.fileSystems);
    swapDevices = (if cfg.useDefaultFilesystems then mkVMOverride else lib.mkDefault) [ ];
    boot.loader.grub.device = mkVMOverride (if cfg.useEFIBoot then "nodev" else cfg.bootLoaderDevice);
    boot.postBootCommands = ''
      if [[ "$(cat /proc/cmdline)" =~ regInfo=([^ ]*) ]]; then nix-store --load-db < ''${BASH_REMATCH[1]}; fi
    '';
    services.qemuGuest.enable = cfg.qemu.guestAgent.enable;
  };
}
