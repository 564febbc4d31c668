"""Nothing of nixpkgs' qemu-vm.nix is dropped silently: every option is in the table of
lib/qemu-vm-options.nix, honoured or refused at evaluation with an error naming it.

nixpkgs is not available here, so the real module's option list is pinned
(tests/nix/pinned/qemu-vm-options.json, read from nixpkgs at the revision it names), and the
settings are tried on the tests' stand-in of the module (tests/nix/fake-nixos), which must
declare the same options and define what qemu-vm.nix defines the way it does."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.nix.test_nixos_vm import evaluate
from tests.nix.test_options_doc import NIXPKGS_LIB
from tests.nix_fixtures import needs_nix

pytestmark = [
    needs_nix,
    pytest.mark.skipif(
        not NIXPKGS_LIB, reason="set CLAN_VM_TEST_NIXPKGS_LIB to a nixpkgs.lib checkout"
    ),
]
PINNED = json.loads((ROOT / "tests" / "nix" / "pinned" / "qemu-vm-options.json").read_text())
QEMU_VM = sorted(option for options in PINNED["files"].values() for option in options)
TABLE = f"(import {ROOT}/lib/qemu-vm-options.nix {{ inherit lib; }}).decisions"


def test_the_table_decides_every_option_of_qemu_vm_nix_and_no_other() -> None:
    table = evaluate(
        f"builtins.mapAttrs (_: e: {{ inherit (e) decision how; refuses = e ? refuse; }}) {TABLE}"
    )
    assert sorted(table) == QEMU_VM
    for option, entry in table.items():
        assert entry["how"].strip(), option
        # What is refused in some setting has the function that refuses it.
        assert entry["decision"].startswith(("honoured", "refused")), option
        if entry["decision"].startswith("refused") and entry["decision"] != "refused (by nixpkgs)":
            assert entry["refuses"], option


def test_the_stand_in_declares_what_qemu_vm_nix_declares() -> None:
    declared = evaluate(
        f"""let
          variant = (nixosSystem {{ modules = [ ]; }}).extendModules {{
            modules = [ {ROOT}/tests/nix/fake-nixos/modules/virtualisation/qemu-vm.nix ];
          }};
          walk = prefix: set: lib.concatLists (lib.mapAttrsToList (name: value:
            if lib.isOption value then [ (prefix + name) ]
            else if builtins.isAttrs value then walk (prefix + name + ".") value
            else [ ]) set);
        in walk "" (builtins.removeAttrs variant.options.virtualisation [ "vmVariant" ])"""
    )
    assert sorted(declared) == QEMU_VM


def vm_with(setting: str) -> str:
    """A machine whose virtualisation.vmVariant has SETTING, as the definition of its VM."""
    return f"""fromNixos {{
      name = "web";
      configuration = nixosSystem {{ modules = [ ({{ lib, ... }}: {{
        networking.hostName = "web";
        virtualisation.vmVariant = {{ {setting} }};
      }}) ]; }};
    }}"""


REFUSED = [
    (
        "virtualisation.useBootLoader = true;",
        "virtualisation.useBootLoader = true: ",
        "set it to false",
    ),
    ("virtualisation.useEFIBoot = true;", "virtualisation.useEFIBoot = true: ", "set it to false"),
    (
        "virtualisation.useSecureBoot = true;",
        "virtualisation.useSecureBoot = true: ",
        "set it to false",
    ),
    (
        "virtualisation.useNixStoreImage = true;",
        "virtualisation.useNixStoreImage = true: ",
        "never comes",
    ),
    (
        "virtualisation.tpm.enable = true;",
        "virtualisation.tpm.enable = true: ",
        "remove the setting",
    ),
    (
        "virtualisation.useHostCerts = true;",
        "virtualisation.useHostCerts = true: ",
        "security.pki.certificateFiles",
    ),
    (
        "virtualisation.vlans = [ 1 2 ];",
        "virtualisation.vlans = [ 1 2 ]: ",
        'network.mode = "bridge"',
    ),
    ("virtualisation.interfaces.eth1.vlan = 2;", "virtualisation.interfaces is set: ", "remove it"),
    (
        'virtualisation.qemu.package = "/nix/store/x-qemu";',
        "virtualisation.qemu.package is set: ",
        "this host's qemu-system-x86_64",
    ),
    ('virtualisation.bios = "/nix/store/x-qboot";', "virtualisation.bios is set: ", "qemuArgs"),
    (
        'virtualisation.diskSize = "auto";',
        'virtualisation.diskSize = "auto": ',
        "give a size in MiB",
    ),
    (
        "virtualisation.directBoot.enable = false;",
        "virtualisation.directBoot.enable = false: ",
        "remove the setting",
    ),
    (
        'virtualisation.qemu.diskInterface = "scsi";',
        'virtualisation.qemu.diskInterface = "scsi": ',
        "virtio only",
    ),
    (
        "virtualisation.graphics = true; virtualisation.qemu.virtioKeyboard = false;",
        "virtualisation.qemu.virtioKeyboard = false: ",
        "remove the setting",
    ),
    (
        'virtualisation.forwardPorts = [ { from = "guest"; guest.address = "10.0.2.100";'
        ' guest.port = 80; host.address = "127.0.0.1"; host.port = 8080; } ];',
        "virtualisation.forwardPorts has a rule from the guest"
        " (tcp 127.0.0.1:8080 <-> 10.0.2.100:80): ",
        "nc through a shell",
    ),
    (
        'virtualisation.forwardPorts = [ { host.address = "0.0.0.0"; host.port = 2222;'
        " guest.port = 22; } ];",
        "virtualisation.forwardPorts has a rule on host address 0.0.0.0: ",
        "leave host.address empty",
    ),
    (
        'virtualisation.qemu.options = [ "-vga std" "-smbios type=1,serial=$SERIAL" ];',
        'virtualisation.qemu.options has "-smbios type=1,serial=$SERIAL"',
        "without one",
    ),
    (
        'virtualisation.qemu.drives = [ { file = "/srv/disk.img"; } ];',
        "virtualisation.qemu.drives has a drive of its own (/srv/disk.img): ",
        "emptyDiskImages",
    ),
    (
        'virtualisation.qemu.networkingOptions = [ "-nic bridge,br=br0" ];',
        "virtualisation.qemu.networkingOptions is set: ",
        "clanVms.<name>.network",
    ),
    (
        'virtualisation.sharedDirectories.home = { source = "$HOME"; target = "/mnt"; };',
        "virtualisation.sharedDirectories home.source = $HOME: a shell word",
        "give an absolute path",
    ),
]


@pytest.mark.parametrize(("setting", "named", "what_to_do"), REFUSED)
def test_a_setting_the_tool_cannot_run_is_refused_naming_it_and_what_to_do(
    setting: str, named: str, what_to_do: str
) -> None:
    with pytest.raises(AssertionError) as refused:
        evaluate(f"({vm_with(setting)}).cpus")
    message = str(refused.value)
    assert "the VM variant of web cannot be run by clan-vm-manager: " in message
    assert named in message and what_to_do in message


def honoured(setting: str) -> Any:
    return evaluate(vm_with(setting))


def test_the_network_of_qemu_vm_nix_restricted_and_forwarded_to_a_guest_address() -> None:
    vm = honoured(
        """virtualisation.restrictNetwork = true;
        virtualisation.forwardPorts = [
          { host.port = 8080; guest.address = "10.0.2.10"; guest.port = 80; }
          { proto = "udp"; host.address = "127.0.0.1"; host.port = 5353; guest.port = 53; }
        ];"""
    )
    assert vm["network"] == {
        "restrict": True,
        "forwardPorts": [
            {"protocol": "tcp", "hostPort": 8080, "guestPort": 80, "guestAddress": "10.0.2.10"},
            {"protocol": "udp", "hostPort": 5353, "guestPort": 53},
        ],
    }


def test_qemu_options_of_ones_own_become_qemu_args_and_qemu_vm_nix_own_are_done() -> None:
    vm = honoured('virtualisation.qemu.options = [ "-device virtio-balloon-pci" "-vga  std" ];')
    # Not the direct boot, -nographic, keyboard and tablet qemu-vm.nix adds: those the tool does.
    assert vm["qemuArgs"] == ["-device", "virtio-balloon-pci", "-vga", "std"]
    assert honoured("")["qemuArgs"] == []


def test_empty_disk_images_keep_their_order_and_the_agent_can_be_off() -> None:
    sizes = list(range(1, 13))
    vm = honoured(
        f"virtualisation.emptyDiskImages = [ {' '.join(map(str, sizes))} ];"
        " virtualisation.qemu.guestAgent.enable = false;"
    )
    assert vm["extraDisks"] == {f"empty{i}": {"size": size} for i, size in enumerate(sizes)}
    assert vm["agent"] is False and honoured("")["agent"] is True


def test_graphics_and_the_consoles_that_follow_from_it() -> None:
    on, off = honoured("virtualisation.graphics = true;"), honoured("")
    assert on["graphics"] is True and off["graphics"] is False
    # The last console is the primary one: tty0 with a display, else the serial console.
    assert on["append"].split()[-2:] == ["console=ttyS0,115200n8", "console=tty0"]
    assert off["append"].split()[-2:] == ["console=tty0", "console=ttyS0,115200n8"]


def test_root_file_system_store_and_shell_word_shares() -> None:
    plain = honoured("")
    assert plain["rootFilesystem"] == {"type": "ext4", "label": "nixos"}
    assert plain["diskSize"] == 1024  # qemu-vm.nix's, not disk-size-option.nix's "auto"
    # diskImage = null: a tmpfs root in the guest, nothing to format.
    assert honoured("virtualisation.diskImage = null;")["rootFilesystem"] is None
    assert honoured("virtualisation.useDefaultFilesystems = false;")["rootFilesystem"] is None
    assert "nix-store" not in honoured("virtualisation.mountHostNixStore = false;")["shares"]
    # The run script's "$TMPDIR"/xchg and "${SHARED_DIR:-$TMPDIR/xchg}": the VM's own.
    assert plain["shares"]["xchg"]["source"] is None and plain["shares"]["shared"]["source"] is None
    shared = honoured(
        'virtualisation.sharedDirectories.data = { source = "/srv/data"; target = "/data"; };'
    )
    assert shared["shares"]["data"] == {
        "source": "/srv/data",
        "target": "/data",
        "readOnly": False,
        "type": "9p",
        "securityModel": "mapped-xattr",
    }
    # nixpkgs' old name for additionalPaths still counts.
    renamed = honoured(
        'virtualisation.pathsInNixDB = [ "/nix/store/00000000000000000000000000000000-x" ];'
    )
    assert renamed["append"] != plain["append"]  # another regInfo
