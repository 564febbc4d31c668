"""A flake is someone else's code: it may not run host programs or expose host files unless
the user allows it; read-only commands never evaluate a flake they were not asked to; a VM
keeps the flake it came from."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.conftest import READY, Guest
from tests.nix_fixtures import NixCLI, git, make_flake, ncli, needs_nix, own_flake

__all__ = ["ncli", "own_flake"]  # fixtures
pytestmark = needs_nix
SYSTEM = "x86_64-linux"


def edit(flake: Path, old: str, new: str, commit: bool = True) -> None:
    text = (flake / "flake.nix").read_text()
    assert old in text
    (flake / "flake.nix").write_text(text.replace(old, new))
    if commit:
        git(flake, "commit", "-qam", "edit")


def with_qemu_args(flake: Path, args: str) -> None:
    edit(flake, "bootTest.expect = ", f"qemuArgs = [ {args} ];\n        bootTest.expect = ")


def test_a_flakes_qemu_args_need_the_users_consent(ncli: NixCLI, own_flake: Path) -> None:
    flake = str(own_flake)
    with_qemu_args(own_flake, '"-netdev" "tap,id=evil,script=/tmp/evil.sh"')
    refused = ncli.run("create", "alpha", "--flake", flake)
    assert refused.code == 2, refused
    line = refused.err.strip()
    assert line.startswith(f"error: clanVms.{SYSTEM}.alpha.qemuArgs of {flake} would run QEMU")
    assert "script=/tmp/evil.sh" in line and "--allow-qemu-args" in line
    assert len(line.splitlines()) == 1
    assert not (ncli.state_dir / "vms" / "alpha").exists()
    assert ncli.run("start", "alpha", "--flake", flake).code == 2
    assert ncli.run("boot-test", "alpha", "--flake", flake).code == 1


@pytest.mark.vm
def test_allowed_qemu_args_are_remembered_until_they_change(ncli: NixCLI, own_flake: Path) -> None:
    flake = str(own_flake)
    with_qemu_args(own_flake, '"-device" "virtio-rng-pci"')
    ncli.ok("create", "alpha", "--flake", flake, "--allow-qemu-args")
    shown = json.loads(ncli.ok("show", "alpha", "--json").out)
    assert shown["config"]["qemu_args"] == ["-device", "virtio-rng-pci"]
    ncli.ok("start", "alpha", "--flake", flake, "--wait-for", READY, "--timeout", "120")
    ncli.ok("stop", "alpha")
    edit(own_flake, '"virtio-rng-pci"', '"virtio-balloon-pci"')
    changed = ncli.run("start", "alpha", "--flake", flake)
    assert changed.code == 2 and "virtio-balloon-pci" in changed.err
    settings = ncli.state_dir.parent / "settings.yaml"
    settings.write_text("allow_qemu_args: [alpha]\n")
    ncli.env["CLAN_VM_CONFIG"] = str(settings)
    ncli.ok("start", "alpha", "--flake", flake, "--wait-for", READY, "--timeout", "120")
    ncli.ok("stop", "alpha")


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("baseImage", '"/etc/shadow"'), ("kernel", '"/boot/vmlinuz"'), ("initrd", '"/etc/hosts"')],
)
def test_a_flake_may_name_only_files_in_the_store(
    ncli: NixCLI, own_flake: Path, attribute: str, value: str
) -> None:
    if attribute == "baseImage":
        edit(own_flake, "bootTest.expect = ", f"baseImage = {value};\n        bootTest.expect = ")
    elif attribute == "kernel":
        edit(own_flake, 'kernel = "${self}/vmlinuz";', f"kernel = {value};")
    else:
        edit(own_flake, "inherit initrd;", f"initrd = {value};")
    result = ncli.run("create", "alpha", "--flake", str(own_flake))
    assert result.code == 2, result
    assert result.err.startswith(f"error: clanVms.{SYSTEM}.alpha.{attribute} is ")
    assert "outside the Nix store" in result.err
    assert not (ncli.state_dir / "vms" / "alpha").exists()


def test_read_only_commands_never_evaluate_a_flake_they_were_not_asked_to(
    ncli: NixCLI, tmp_path: Path, guest: Guest
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "flake.nix").write_text("{ outputs = { self }: { this is not nix")
    ncli.ok("create", "byhand", "--kernel", str(guest.kernel), "--disk", "16")
    for args in (
        ("show", "byhand"),
        ("show", "byhand", "--json"),
        ("status", "byhand"),
        ("list",),
        ("list", "--json"),
        ("history",),
        ("console", "byhand", "--log"),
        ("snapshots", "byhand"),
    ):
        result = ncli.run(*args, cwd=broken)
        assert result.code == 0, (args, result)
    assert ncli.nix_calls() == 0
    asked = ncli.run("list", "--flake", cwd=broken)
    assert asked.code == 1 and asked.err.startswith("error:")
    assert ncli.nix_calls() >= 1


@pytest.mark.vm
def test_a_vm_keeps_its_own_flake_and_a_hand_made_vm_uses_none(
    ncli: NixCLI, own_flake: Path, tmp_path: Path, guest: Guest
) -> None:
    other = make_flake(tmp_path / "other", guest)
    edit(other, "memory = 192;", "memory = 256;")
    ncli.ok("create", "alpha", "--flake", str(own_flake))
    ncli.ok("create", "byhand", "--kernel", str(guest.kernel), "--initrd", str(guest.initrd))
    # Started from inside another flake that declares "alpha" differently: its own flake wins.
    ncli.ok("start", "alpha", "--wait-for", READY, "--timeout", "120", cwd=other)
    assert json.loads(ncli.ok("status", "alpha", "--json").out)["memory"] == 192
    ncli.ok("stop", "alpha", "--force")
    calls = ncli.nix_calls()
    ncli.ok("start", "byhand", cwd=other)
    assert ncli.nix_calls() == calls  # a VM made on the command line evaluates nothing
    ncli.ok("stop", "byhand", "--force")


def test_a_changed_mac_may_not_take_another_vms(ncli: NixCLI, own_flake: Path) -> None:
    flake = str(own_flake)
    ncli.ok("create", "alpha", "--flake", flake)
    ncli.ok("create", "beta", "--flake", flake)
    beta_mac = json.loads(ncli.ok("show", "beta", "--json").out)["mac"]
    edit(
        own_flake,
        'alpha = guest "alpha";',
        f'alpha = guest "alpha" // {{ network.mac = "{beta_mac}"; }};',
    )
    result = ncli.run("create", "alpha", "--flake", flake)
    assert result.code == 2 and f"MAC address {beta_mac} is already used by VM 'beta'" in result.err
    assert json.loads(ncli.ok("show", "alpha", "--json").out)["mac"] != beta_mac


def test_a_nix_without_build_users_says_what_to_do(ncli: NixCLI, own_flake: Path) -> None:
    # A derivation no earlier run has built, so that nix has to build it.
    edit(own_flake, 'name = "clan-test-initrd";', f'name = "clan-test-initrd-{uuid.uuid4().hex}";')
    conf = ncli.state_dir.parent / "nix-conf"
    conf.mkdir()
    (conf / "nix.conf").write_text("build-users-group = clan-vm-no-such-group\nsandbox = false\n")
    ncli.env["NIX_CONF_DIR"] = str(conf)
    result = ncli.run("build", "alpha", "--flake", str(own_flake))
    assert result.code == 1
    line = result.err.strip()
    assert len(line.splitlines()) == 1
    assert "clan-vm-no-such-group" in line and "nix-setup-systemd" in line


def test_a_flakes_host_shares_need_the_users_consent(
    ncli: NixCLI, own_flake: Path, tmp_path: Path
) -> None:
    flake = str(own_flake)
    secret = tmp_path / "secret"
    secret.mkdir()
    shares = (
        f'shares.data = {{ source = "{secret}"; }}; '
        'shares.own = { }; shares.flake = { source = "${self}/guest"; };'
    )
    edit(own_flake, "bootTest.expect = ", f"{shares}\n        bootTest.expect = ")
    refused = ncli.run("create", "alpha", "--flake", flake)
    assert refused.code == 2, refused
    (line,) = refused.err.strip().splitlines()
    assert line.startswith(f"error: clanVms.{SYSTEM}.alpha.shares of {flake} would let the VM see")
    assert f"{secret} (read-only)" in line and "--allow-shares" in line
    assert "/guest" not in line  # a read-only share from the store needs no consent
    assert not (ncli.state_dir / "vms" / "alpha").exists()
    ncli.ok("create", "alpha", "--flake", flake, "--allow-shares")
    shown = json.loads(ncli.ok("show", "alpha", "--json").out)
    assert shown["config"]["shares"]["data"]["source"] == str(secret)
    assert (Path(shown["directory"]) / "shares" / "own").is_dir()  # the VM's own directory
    # Remembered for exactly these directories: another one needs consent again.
    edit(own_flake, f'source = "{secret}";', f'source = "{tmp_path}";')
    assert ncli.run("create", "alpha", "--flake", flake).code == 2


def test_a_share_that_only_looks_like_the_store_needs_consent(
    ncli: NixCLI, own_flake: Path, tmp_path: Path
) -> None:
    flake = str(own_flake)
    secret = tmp_path / "secret"
    secret.mkdir()
    # A store path that is a link to a directory of this machine is that directory.
    link = (
        'derivation { name = "link"; system = "x86_64-linux"; builder = "${self}/busybox"; '
        f'args = [ "ln" "-s" "{secret}" (builtins.placeholder "out") ]; }}'
    )
    edit(
        own_flake,
        "bootTest.expect = ",
        f'shares.data.source = "${{{link}}}";\n        bootTest.expect = ',
    )
    refused = ncli.run("create", "alpha", "--flake", flake)
    assert refused.code == 2 and "--allow-shares" in refused.err, refused
    assert not (ncli.state_dir / "vms" / "alpha").exists()
    # A path through the store and back out of it is refused whatever the user allows.
    edit(
        own_flake,
        f'shares.data.source = "${{{link}}}";',
        f'shares.data.source = "/nix/store/../..{secret}";',
    )
    dotted = ncli.run("create", "alpha", "--flake", flake, "--allow-shares")
    assert dotted.code == 2 and "'..'" in dotted.err, dotted
    assert not (ncli.state_dir / "vms" / "alpha").exists()


def test_a_virtiofs_share_of_the_store_is_taken_like_a_9p_one(
    ncli: NixCLI, own_flake: Path
) -> None:
    share = 'shares.data = { source = "${self}/guest"; type = "virtiofs"; };'
    edit(own_flake, "bootTest.expect = ", f"{share}\n        bootTest.expect = ")
    ncli.ok("create", "alpha", "--flake", str(own_flake))  # read-only, from the store: free
    data = json.loads(ncli.ok("show", "alpha", "--json").out)["config"]["shares"]["data"]
    assert data["type"] == "virtiofs" and data["read_only"] is True
