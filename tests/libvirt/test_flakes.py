"""A VM declared in a flake with a remote ``host``: built here, the store paths it refers to
copied to that host's own Nix store and rooted there, started there, unrooted at delete.
Host B has a store of its own (empty at first), so nothing is there unless it was sent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import READY, Guest
from tests.libvirt.conftest import LV, shell
from tests.libvirt.daemons import Host
from tests.nix_fixtures import git, make_flake, needs_nix

pytestmark = [pytest.mark.vm, needs_nix]
# Where root's login on host B keeps the roots (relative to its home, /root).
ROOTS = "/root/.local/state/clan-vm-tasks/gcroots"
POOL = "/var/lib/libvirt/images"  # the default pool (host B's in its own mount namespace)

FLAKE = """{
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
      data = derivation {
        name = "clan-test-data";
        inherit system;
        builder = busybox;
        args = [ "sh" "-c" "${busybox} mkdir $out && echo from-the-store > $out/greeting" ];
      };
    in
    {
      clanVms.${system}.NAME = {
        cpus = 1;
        memory = 192;
        diskSize = 64;
        kernel = "${self}/vmlinuz";
        inherit initrd;
        append = "console=ttyS0 quiet no_timer_check";
        host = "b";
        shares.data.source = "${data}";
      };
    };
}
"""


def on(host: Host, *argv: str) -> str:
    """What ARGV prints, run on HOST (host B: in its own namespaces)."""
    result = subprocess.run(
        [*host.inside, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    return result.stdout


def on_b(lv: LV, *argv: str) -> str:
    return on(lv.host("b"), *argv)


def test_a_flake_vm_on_a_remote_host_gets_its_store_paths_there(
    lv: LV, guest: Guest, tmp_path: Path
) -> None:
    lv.host("b")
    cli, name = lv.cli, lv.name("flake")
    cli.env["CLAN_VM_NIX_OFFLINE"] = "1"
    flake = make_flake(tmp_path / "flake", guest)
    (flake / "flake.nix").write_text(FLAKE.replace("NAME", name))
    git(flake, "commit", "-qam", "a VM on host b")

    started = cli.ok("start", name, "--flake", str(flake), "--wait-for", READY, "--timeout", "180")
    assert f"created VM '{name}'" in started.out + started.err
    assert f"started VM '{name}' on b (" in started.out
    # The share's store path (and its closure) is in host B's own store, rooted there.
    [data] = [line for line in on_b(lv, "ls", "/nix/store").split() if "clan-test-data" in line]
    assert on_b(lv, "cat", f"/nix/store/{data}/greeting").strip() == "from-the-store"
    roots = on_b(lv, "find", ROOTS, "-type", "l")
    [root] = [line for line in roots.split() if name in line]
    assert on_b(lv, "readlink", root).strip() == f"/nix/store/{data}"
    # An indirect root: B's garbage collector knows it.
    registered = on_b(lv, "find", "/nix/var/nix/gcroots/auto", "-type", "l", "-printf", "%l\n")
    assert root in registered.split()
    # The kernel and initrd went as volumes, not into the store.
    assert not [p for p in on_b(lv, "ls", "/nix/store").split() if "initrd" in p]
    # B's QEMU exports it to the guest over 9p, read-only.
    dumped = lv.virsh("b", "dumpxml", name)
    assert f"<source dir='/nix/store/{data}'/>" in dumped and "<readonly/>" in dumped
    assert json.loads(cli.ok("status", name, "--json").out)["state"] == "running"
    # Started again, nothing changed: nothing more to send, the same root.
    cli.ok("stop", name, "--force")
    cli.ok("start", name, "--flake", str(flake), "--wait-for", READY, "--timeout", "180")
    assert on_b(lv, "readlink", root).strip() == f"/nix/store/{data}"

    deleted = cli.ok("delete", name, "--force")
    assert "warning" not in deleted.err
    remaining = on_b(lv, "find", ROOTS, "-name", f"*{name}*")
    assert remaining.strip() == ""


def test_a_store_share_of_this_machine_is_refused_for_a_libvirt_host(
    lv: LV, guest: Guest, tmp_path: Path
) -> None:
    lv.host("b")
    cli, name = lv.cli, lv.name("hostshare")
    cli.env["CLAN_VM_NIX_OFFLINE"] = "1"
    flake = make_flake(tmp_path / "flake", guest)
    text = FLAKE.replace("NAME", name).replace('"${data}"', f'"{tmp_path}"')
    (flake / "flake.nix").write_text(text)
    git(flake, "commit", "-qam", "a host directory")
    result = cli.run("start", name, "--flake", str(flake), "--allow-shares")
    assert result.code == 2, result.err
    # Refused before anything is built.
    assert result.err.strip().splitlines() == [
        f"error: clanVms.x86_64-linux.{name}: VM '{name}' on a libvirt host: share 'data' "
        "shares a directory of this machine: only store paths can be shared there"
    ]
    assert name not in lv.domains("b") and not cli.ok("list", "--json").out.strip("[]\n")


@pytest.mark.parametrize("where", ["a", "b"])
def test_a_nixos_shaped_vm_runs_on_a_libvirt_host(
    lv: LV, guest: Guest, tmp_path: Path, where: str
) -> None:
    """What a NixOS machine's VM needs (lib/nixos-to-vm.nix), on a libvirt host: a root disk
    formatted here, the host's store shared read-only, and a directory of its own there."""
    host = lv.host(where)
    cli, name = lv.cli, lv.name("nixos")
    cli.env["CLAN_VM_NIX_OFFLINE"] = "1"
    flake = make_flake(tmp_path / "flake", guest)
    shaped = f"""rootFilesystem = {{ type = "ext4"; label = "nixos"; }};
        shares.nix-store = {{ source = "/nix/store"; target = "/nix/.ro-store"; }};
        shares.xchg = {{ target = "/tmp/xchg"; readOnly = false; securityModel = "none"; }};
        host = "{where}";"""
    # The data share stands for the system a NixOS VM's init= names: copied to B's store.
    text = FLAKE.replace("NAME", name).replace('host = "b";', shaped)
    (flake / "flake.nix").write_text(text)
    git(flake, "commit", "-qam", f"a NixOS-shaped VM on host {where}")

    cli.ok("start", name, "--flake", str(flake), "--wait-for", READY, "--timeout", "180")
    # The ext4 superblock's label (offset 1144) and magic (1080, 0xef53), read in the guest.
    label = "dd if=/dev/vda bs=1 skip=1144 count=5 2>/dev/null"
    magic = "dd if=/dev/vda bs=1 skip=1080 count=2 2>/dev/null | od -An -tx2 | tr -d ' '"
    shell(lv, name, f"echo label:$({label}):magic:$({magic})", "label:nixos:magic:ef53")
    # Three 9p devices (virtio device 9): the data, the store, its own directory.
    nine_p = "cat /sys/bus/virtio/devices/*/device | grep -c 0x0009 | sed s/^/nine-p:/"
    shell(lv, name, nine_p, "nine-p:3")
    dumped = lv.virsh(where, "dumpxml", name)
    own = f"{POOL}/{name}.share-xchg"
    assert f"<source dir='{own}'/>" in dumped and "<source dir='/nix/store'/>" in dumped
    assert on(host, "stat", "-c", "%F", own).strip() == "directory"
    on(host, "touch", f"{own}/left-by-the-guest")

    deleted = cli.ok("delete", name, "--force")
    assert "warning" not in deleted.err
    assert not [v for v in lv.volumes(where) if v.startswith(name)]
    assert on(host, "ls", POOL).split().count(f"{name}.share-xchg") == 0
