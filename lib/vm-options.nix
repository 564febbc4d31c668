# The options of one VM, clanVms.<name>: a module for types.submodule. They mirror
# clan_vm_tasks/models.py (VMConfig); tests/nix/test_flake_module.py compares the two, and
# docs/options.md is generated from these declarations (python -m tests.nix.options_doc).
#
# NIXOS name { sshd, graphics }: the clanVms definition derived from
# nixosConfigurations.<name> (its VM variant with clanVm.sshd, and virtualisation.graphics
# unless null), used for the defaults of a VM that sets nixosConfiguration (see
# lib/from-nixos.nix); HASNIXOS name: whether the flake has that configuration.
{
  lib,
  nixos ? name: _: throw "nixosConfiguration needs the flake module (clan-vm-tasks.flakeModules.default)",
  hasNixos ? _: true,
}:
{ name, config, options, ... }:
let
  inherit (lib) mkOption mkDefault types literalExpression;

  # A file the VM boots from or lays its disk over: it must be in the Nix store, so a
  # flake cannot make the tool read a file of the host. A path literal (./vmlinuz) is
  # copied to the store, a derivation is built; a string must be a path in a store object,
  # without '..' (/nix/store/../etc/shadow is not in the store). Where a store path leads
  # (a link out of the store) is only known once it is built: the tool checks that too.
  storePathString = x:
    builtins.isString x
    && builtins.match "${lib.escapeRegex builtins.storeDir}/[0-9a-z]{32}-[^/]+(/.*)?" x != null
    && !(builtins.elem ".." (lib.splitString "/" x));
  storeFile = types.mkOptionType {
    name = "storeFile";
    description = "path in the flake (./vmlinuz), derivation or /nix/store path";
    descriptionClass = "noun";
    check = x: builtins.isPath x || lib.isDerivation x || storePathString x;
    merge = lib.mergeEqualOption;
  };

  # Names that become QEMU ids, mount tags and disk serials. (types.addCheck is not checked
  # for an attrsOf submodule by every nixpkgs.lib, so the names are checked when read.)
  checkNames = option: pattern: what:
    lib.mapAttrs (key: value:
      if builtins.match pattern key != null then value
      else throw "clanVms.${name}.${option}: \"${key}\" is not ${what}");

  portForward = types.submodule {
    options = {
      protocol = mkOption {
        type = types.enum [ "tcp" "udp" ];
        default = "tcp";
        example = "udp";
        description = "Protocol of the forwarded port.";
      };
      hostPort = mkOption {
        type = types.either (types.ints.between 1 65535) (types.enum [ "auto" ]);
        example = "auto";
        description = ''
          Port on 127.0.0.1 of the host. `"auto"`: the port of the VM's previous boot while
          it is free, else a free one (chosen under a lock, so VMs started in parallel never
          collide).
        '';
      };
      guestPort = mkOption {
        type = types.ints.between 1 65535;
        example = 22;
        description = "Port in the guest.";
      };
      guestAddress = mkOption {
        type = types.nullOr (types.strMatching "([0-9]{1,3}[.]){3}[0-9]{1,3}");
        default = null;
        example = "10.0.2.15";
        description = ''
          IPv4 address in the guest's user network the port is forwarded to; `null`: the
          guest's own (as nixpkgs' `forwardPorts.*.guest.address` "").
        '';
      };
    };
  };

  share = types.submodule {
    options = {
      source = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/srv/photos";
        description = ''
          Host directory to share. A directory outside the Nix store needs the user's
          consent when the definition comes from a flake (`--allow-shares`, or
          `allow_shares` in the settings file). A path literal (`./data`) is copied to the
          store. `null`: a directory of the VM's own, kept with it in the state directory
          (`vms/NAME/shares/TAG`; on a libvirt host, the directory volume `NAME.share-TAG`
          of its pool). On a libvirt host only store paths, the store itself and `null` can
          be shared.
        '';
      };
      target = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = null;
        example = "/mnt/photos";
        description = ''
          Where the guest mounts it. A VM derived from a NixOS configuration mounts its
          `virtualisation.sharedDirectories` there by itself; other guests mount the tag,
          e.g. `mount -t 9p -o trans=virtio,version=9p2000.L TAG TARGET` (9p) or
          `mount -t virtiofs TAG TARGET` (virtiofs).
        '';
      };
      readOnly = mkOption {
        type = types.bool;
        default = true;
        example = false;
        description = "Whether the guest may only read the share.";
      };
      type = mkOption {
        type = types.enum [ "9p" "virtiofs" ];
        default = "9p";
        example = "virtiofs";
        description = ''
          How the share is passed: `9p` (by QEMU itself) or `virtiofs` (one QEMU virtiofsd
          per share beside QEMU; the guest mounts it with `mount -t virtiofs TAG TARGET`).
          readOnly is enforced by the host either way. A VM with a virtiofs share cannot take
          live snapshots; libvirt hosts take 9p only.
        '';
      };
      securityModel = mkOption {
        type = types.enum [ "passthrough" "mapped-xattr" "mapped-file" "none" ];
        default = "mapped-xattr";
        example = "none";
        description = "QEMU's 9p security model (as nixpkgs' `virtualisation.sharedDirectories`).";
      };
    };
  };

  extraDisk = types.submodule {
    options.size = mkOption {
      type = types.ints.between 1 67108864;
      example = 4096;
      description = ''
        Size in MiB of an extra, empty qcow2 disk, created with the VM (and when it is first
        declared). The guest sees it as `/dev/disk/by-id/virtio-NAME`. It grows like the root
        disk and never shrinks.
      '';
    };
  };

  rootFilesystem = types.submodule {
    options = {
      type = mkOption {
        type = types.enum [ "ext4" ];
        default = "ext4";
        example = "ext4";
        description = "File system made on the root disk when the VM is created.";
      };
      label = mkOption {
        type = types.strMatching "[A-Za-z0-9_.-]{1,16}";
        default = "nixos";
        example = "nixos";
        description = "Its label (NixOS' VM variant mounts `/dev/disk/by-label/nixos` as `/`).";
      };
    };
  };

  # graphics set here reaches the VM variant (its consoles follow from it, as in qemu-vm.nix);
  # otherwise the variant says.
  graphicsSet = options.graphics.highestPrio < 1000;
  derived = nixos config.nixosConfiguration {
    inherit (config) sshd;
    graphics = if graphicsSet then config.graphics else null;
  };
  # With sshd, guest port 22 is forwarded unless the variant forwards it already.
  sshForward = lib.optional
    (config.sshd && !lib.any (f: f.guestPort == 22) derived.network.forwardPorts)
    { protocol = "tcp"; hostPort = "auto"; guestPort = 22; };
  fromNixos = attr: mkDefault derived.${attr};
in
{
  options = {
    name = mkOption {
      # clan's machine-name rule: the name is also the guest's hostname.
      type = types.strMatching "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
      default = name;
      defaultText = literalExpression "<name>";
      example = "web";
      description = ''
        Name of the VM (and its hostname, and its name as a clan machine): 1 to 63 letters,
        digits and `-`, not starting or ending with `-`.
      '';
    };
    nixosConfiguration = mkOption {
      type = types.nullOr types.str;
      apply = n:
        if n == null || hasNixos n then n
        else throw "clanVms.${name}.nixosConfiguration = \"${n}\": the flake has no nixosConfigurations.${n}";
      default = null;
      example = "web";
      description = ''
        Boot `nixosConfigurations.<this>` of the flake as this VM, through a VM variant of it
        (`extendModules`, as `virtualisation.vmVariant`): its file systems and boot loader
        stay as they are. Every other option of the VM defaults to what the variant says:
        its `virtualisation.*` settings (`virtualisation.vmVariant.virtualisation.*`
        included: cores, memorySize, diskSize, forwardPorts, restrictNetwork,
        sharedDirectories, emptyDiskImages, graphics, qemu.options, qemu.guestAgent.enable,
        ...), each honoured or refused as the table of qemu-vm.nix's options below says;
        what is set here wins (`graphics` and `sshd` reach the variant). In a clan, the VM
        is that clan machine, without clan's vars and secrets (see docs/nix.md).
      '';
    };
    cpus = mkOption {
      type = types.ints.between 1 256;
      default = 2;
      example = 4;
      description = "Virtual CPUs.";
    };
    memory = mkOption {
      type = types.ints.between 16 4194304;
      default = 2048;
      example = 4096;
      description = "Memory in MiB.";
    };
    diskSize = mkOption {
      type = types.ints.between 1 67108864;
      default = 20480;
      example = 8192;
      description = ''
        Size of the root disk in MiB. It grows when this grows (while the VM is stopped);
        a smaller value keeps the larger disk, with a warning (delete and re-create the VM
        to shrink it).
      '';
    };
    kernel = mkOption {
      type = types.nullOr storeFile;
      default = null;
      example = literalExpression ''"''${pkgs.linux}/bzImage"'';
      description = "Kernel image for direct kernel boot.";
    };
    initrd = mkOption {
      type = types.nullOr storeFile;
      default = null;
      example = literalExpression "./initrd";
      description = "Initrd for direct kernel boot (needs `kernel`).";
    };
    baseImage = mkOption {
      type = types.nullOr storeFile;
      default = null;
      example = literalExpression "./base.qcow2";
      description = ''
        Read-only base image (qcow2 or raw); the VM's disk is a copy-on-write overlay on it.
        It cannot change once the VM exists.
      '';
    };
    append = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "console=ttyS0";
      description = "Kernel command line.";
    };
    rootFilesystem = mkOption {
      type = types.nullOr rootFilesystem;
      default = null;
      example = { type = "ext4"; label = "nixos"; };
      description = ''
        Make a file system on the root disk when the VM is created (on the host, without
        loop devices), so that a guest can mount it on its first boot. `null`: the disk
        starts empty.
      '';
    };
    machine = mkOption {
      type = types.strMatching "[A-Za-z0-9_.-]+";
      default = "q35";
      example = "pc";
      description = "QEMU machine type.";
    };
    accel = mkOption {
      type = types.enum [ "auto" "kvm" "tcg" ];
      default = "auto";
      example = "tcg";
      description = "Accelerator: `auto` uses KVM when it works, else TCG.";
    };
    graphics = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Give the VM a display (virtio-vga), served over SPICE on a socket of the VM's
        (`remote-viewer spice+unix://SOCKET`; `show` prints it). Off: serial console only.
      '';
    };
    network = {
      mode = mkOption {
        type = types.enum [ "user" "nat" "bridge" "tap" "none" ];
        default = "user";
        example = "bridge";
        description = "`user` (QEMU's NAT; `nat` is the same), `bridge`, `tap` or `none`.";
      };
      bridge = mkOption {
        type = types.nullOr (types.strMatching "[A-Za-z0-9_.-]{1,15}");
        default = null;
        example = "clan-br0";
        description = "Bridge to join with mode `bridge` (default `clan-br0`).";
      };
      tap = mkOption {
        type = types.nullOr (types.strMatching "[A-Za-z0-9_.-]{1,15}");
        default = null;
        example = "tap0";
        description = "Existing tap device, with mode `tap`.";
      };
      mac = mkOption {
        type = types.nullOr (types.strMatching "[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}");
        default = null;
        example = "02:00:00:00:00:01";
        description = "MAC address (unicast; default: derived from the name).";
      };
      restrict = mkOption {
        type = types.bool;
        default = false;
        example = true;
        description = ''
          Isolate the guest (mode `user` only, QEMU's `restrict=on`): it reaches neither
          the host nor the outside; the forwards still work (nixpkgs'
          `virtualisation.restrictNetwork`).
        '';
      };
      forwardPorts = mkOption {
        type = types.listOf portForward;
        default = [ ];
        example = [ { hostPort = "auto"; guestPort = 22; } ];
        description = "Host ports on 127.0.0.1 forwarded to guest ports (mode `user` only).";
      };
    };
    shares = mkOption {
      type = types.attrsOf share;
      apply = checkNames "shares" "[A-Za-z0-9][A-Za-z0-9_.-]{0,30}"
        "a mount tag (1 to 31 letters, digits, _ . -, starting with a letter or digit)";
      default = { };
      example = { data = { source = "/srv/data"; target = "/data"; }; };
      description = "Host directories shared with the guest, by mount tag (1 to 31 letters, digits, `_`, `.`, `-`).";
    };
    extraDisks = mkOption {
      type = types.attrsOf extraDisk;
      apply = checkNames "extraDisks" "[A-Za-z0-9][A-Za-z0-9_-]{0,19}"
        "a disk name (1 to 20 letters, digits, _ -, starting with a letter or digit)";
      default = { };
      example = { data.size = 4096; };
      description = "Extra empty disks, by name (1 to 20 letters, digits, `_`, `-`: the disk's serial).";
    };
    qemuArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "-device" "virtio-balloon-pci" ];
      description = ''
        Extra QEMU arguments. From a flake they need the user's consent
        (`--allow-qemu-args`), since they can make QEMU run host programs.
      '';
    };
    bootTest = {
      expect = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "login:";
        description = ''
          What `boot-test` waits for on the serial console. A VM of a NixOS configuration
          (`nixosConfiguration`) waits for `"login:"` unless this is set.
        '';
      };
      timeout = mkOption {
        type = types.ints.between 1 86400;
        default = 120;
        example = 600;
        description = "Seconds `boot-test` waits for it.";
      };
      checks = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "systemctl is-system-running --wait" ];
        description = "Commands run in the booted guest through the guest agent; each must exit 0.";
      };
    };
    agent = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = "Give the VM a virtio-serial channel for the QEMU guest agent (exec, copy, ssh keys).";
    };
    sshUser = mkOption {
      type = types.strMatching "[a-z_][a-z0-9_-]{0,31}";
      default = "root";
      example = "alice";
      description = "The guest user whose authorized_keys get the VM's SSH key.";
    };
    sshd = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = "For a VM of a NixOS configuration: run sshd in the guest (key login only) and forward guest port 22 to an `auto` port, so `clan-vm-manager ssh` works; the tool puts its key into the user's authorized_keys through the guest agent. Other guests run sshd or not by themselves.";
    };
    host = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "qemu+ssh://root@build1/system";
      description = "Run the VM on this libvirt host: a URI or a name from the settings file's hosts. The VM is built here; the store paths it refers to besides its kernel and initrd (shared store paths) are copied to a remote host with nix copy over the URI's ssh and rooted there.";
    };
  };

  # A VM of a NixOS configuration: what its VM variant says, unless set here.
  config = lib.mkIf (config.nixosConfiguration != null) {
    cpus = fromNixos "cpus";
    memory = fromNixos "memory";
    diskSize = fromNixos "diskSize";
    kernel = fromNixos "kernel";
    initrd = fromNixos "initrd";
    append = fromNixos "append";
    rootFilesystem = fromNixos "rootFilesystem";
    graphics = fromNixos "graphics";
    agent = fromNixos "agent";
    qemuArgs = fromNixos "qemuArgs";
    network.restrict = mkDefault derived.network.restrict;
    network.forwardPorts = mkDefault (derived.network.forwardPorts ++ sshForward);
    shares = lib.mapAttrs (_: lib.mapAttrs (_: mkDefault)) derived.shares;
    extraDisks = lib.mapAttrs (_: lib.mapAttrs (_: mkDefault)) derived.extraDisks;
    bootTest.expect = mkDefault derived.bootTest.expect;
  };
}
