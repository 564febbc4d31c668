"""How ssh reaches a libvirt host for Nix: read from the host's URI, as libvirt reads it."""

from __future__ import annotations

import pytest

from clan_vm_tasks.backends.libvirt.remote import SSHTarget, roots_dir, ssh_target
from clan_vm_tasks.errors import InvalidInput


def test_this_machine_needs_no_copy() -> None:
    assert ssh_target("qemu:///system") is None
    assert ssh_target("qemu+unix:///system") is None


def test_a_remote_host_without_ssh_cannot_receive_store_paths() -> None:
    for uri in ("qemu://hv1/system", "qemu+tcp://hv1/system", "qemu+tls://hv1/system"):
        with pytest.raises(InvalidInput, match="not reached with ssh"):
            ssh_target(uri)


def test_the_uri_gives_user_port_key_and_verification() -> None:
    uri = "qemu+ssh://root@hv1.example:2222/system?keyfile=/k/id&no_verify=1"
    target = ssh_target(uri)
    assert target == SSHTarget("hv1.example", "root", 2222, "/k/id", None, True)
    assert target.store_uri() == "ssh://root@hv1.example?ssh-key=/k/id"
    assert target.options() == ["-p", "2222", "-o", "StrictHostKeyChecking=no"]
    argv = target.argv("nix-store", "--realise", "/nix/store/abc-x")
    assert argv[0].startswith("/tmp/clan-vm-")  # the tool's bounded ssh
    assert argv[1:] == [
        "-p", "2222", "-o", "StrictHostKeyChecking=no", "-i", "/k/id",
        "root@hv1.example", "--", "nix-store", "--realise", "/nix/store/abc-x",
    ]  # fmt: skip


def test_the_uris_own_ssh_program_is_used() -> None:
    target = ssh_target("qemu+ssh://hv1/system?command=/usr/local/bin/myssh")
    assert target is not None and target.store_uri() == "ssh://hv1"
    assert target.argv("true")[0] == "/usr/local/bin/myssh"


def test_nothing_a_shell_interprets_reaches_the_host() -> None:
    target = SSHTarget("hv1")
    for word in ("a;b", "$(id)", "a b", "`x`", "a|b", "*"):
        with pytest.raises(ValueError):
            target.argv("rm", word)


def test_roots_of_two_state_directories_do_not_meet() -> None:
    a, b = roots_dir("laptop:/home/a/state", "web"), roots_dir("laptop:/home/b/state", "web")
    assert a != b and a.startswith("/nix/var/nix/gcroots/clan-vm-tasks/") and a.endswith("-web")
