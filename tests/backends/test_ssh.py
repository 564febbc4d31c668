"""How ssh reaches a libvirt host (for Nix, and for what libvirt cannot do): read from the
host's URI, as libvirt reads it, with nothing of it able to become an ssh option, a Nix
store setting or a shell word."""

from __future__ import annotations

import pytest

from clan_vm_tasks.backends.ssh import SSHTarget, ssh_target
from clan_vm_tasks.errors import ClanVMError, InvalidInput
from clan_vm_tasks.names import uri_problem
from clan_vm_tasks.nix.remote import is_roots_dir, roots_dir


def test_this_machine_needs_no_copy() -> None:
    assert ssh_target("qemu:///system") is None
    assert ssh_target("qemu+unix:///system") is None


def test_a_remote_host_without_ssh_cannot_receive_store_paths() -> None:
    for uri in ("qemu://hv1/system", "qemu+tcp://hv1/system", "qemu+tls://hv1/system"):
        with pytest.raises(InvalidInput, match="not reached with ssh"):
            ssh_target(uri)


def test_the_uri_gives_user_port_key_and_verification_as_separate_ssh_words() -> None:
    uri = "qemu+ssh://r%6fot@hv1.example:2222/system?keyfile=/k/my%20id&no_verify=1"
    target = ssh_target(uri)
    assert target == SSHTarget("hv1.example", "root", 2222, "/k/my id", None, True)
    assert target.store_uri() == "ssh://hv1.example"  # nothing of the URI in Nix's URL
    assert target.options() == [
        "-p", "2222", "-o", "StrictHostKeyChecking=no", "-i", "/k/my id", "-l", "root",
    ]  # fmt: skip
    argv = target.argv("nix-store", "--realise", "/nix/store/abc-x")
    assert argv[0].startswith("/tmp/clan-vm-")  # the tool's bounded ssh
    assert argv[1:] == [
        *target.options(), "--", "hv1.example", "nix-store", "--realise", "/nix/store/abc-x",
    ]  # fmt: skip


def test_the_uris_own_ssh_program_is_used() -> None:
    target = ssh_target("qemu+ssh://hv1/system?command=/usr/local/bin/myssh")
    assert target is not None and target.store_uri() == "ssh://hv1"
    assert target.argv("true")[0] == "/usr/local/bin/myssh"


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+ssh://-oProxyCommand=touch@hv1/system",  # a user that ssh would take as an option
        "qemu+ssh://root@-oproxycommand=x/system",
        "qemu+ssh://ro%20ot@hv1/system",
        "qemu+ssh://root@[fd00::1]/system",
    ],
)
def test_users_and_hosts_that_could_be_options_are_refused(uri: str) -> None:
    with pytest.raises(InvalidInput, match="letters, digits"):
        ssh_target(uri)


@pytest.mark.parametrize(
    "uri",
    [
        # A space, once decoded, would have split NIX_SSHOPTS into another ssh option.
        "qemu+ssh://root@hv1/system?keyfile=/x%20-oProxyCommand=touch",
        # A decoded "&" would have added a setting (remote-program=) to Nix's store URL.
        "qemu+ssh://root@hv1/system?keyfile=/a%26remote-program%3Dtouch",
        "qemu+ssh://root@hv1:abc/system",
        "qemu+ssh://root:secret@hv1/system",
    ],
)
def test_a_flakes_uri_cannot_smuggle_options_settings_or_passwords(uri: str) -> None:
    assert uri_problem(uri, trusted=False) is not None
    assert uri_problem(uri, trusted=True) is not None


def test_known_hosts_files_named_by_a_uri_are_not_given_to_ssh() -> None:
    # libvirt's ssh transport ignores known_hosts; ssh with no_verify would append to it.
    target = ssh_target("qemu+ssh://hv1/system?known_hosts=/home/u/.bashrc&no_verify=1")
    assert target is not None and "/home/u/.bashrc" not in " ".join(target.argv("true"))


def test_nothing_a_shell_interprets_reaches_the_host() -> None:
    target = SSHTarget("hv1")
    for word in ("a;b", "$(id)", "a b", "`x`", "a|b", "*", "a?"):
        with pytest.raises(ValueError):
            target.argv("rm", word)


def test_roots_of_two_state_directories_do_not_meet_and_a_record_names_only_them() -> None:
    a, b = roots_dir("laptop:/home/a/state", "web"), roots_dir("laptop:/home/b/state", "web")
    assert a != b and a.startswith(".local/state/clan-vm-tasks/gcroots/") and a.endswith("-web")
    assert is_roots_dir(a, "web") and not is_roots_dir(a, "db")
    assert not is_roots_dir(a + "/../../..", "web") and not is_roots_dir("/", "web")


def test_a_hosts_network_is_read_only_where_ssh_reaches_it() -> None:
    """Where a bridged guest on a host may be is read on that host, over the URI's ssh;
    a host reached otherwise cannot tell, and says so (ssh then goes nowhere)."""
    from clan_vm_tasks.backends.libvirt.backend import LibvirtBackend

    with pytest.raises(ClanVMError, match="network of br0 on host h: the host is not reached"):
        LibvirtBackend("h", "qemu+tcp://h.example/system").networks("br0")
