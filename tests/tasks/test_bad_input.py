"""Bad input: one ``error:`` line, exit code 2, no traceback, nothing created or changed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI, ROOT, Guest

BAD_NAMES = [
    "",
    "../x",
    "a/b",
    "has space",
    "x" * 65,
    "-leading-dash",
    ".hidden",
    "..",
    "tab\tname",
]


def snapshot(state_dir: Path) -> dict[str, bytes]:
    """Every file under the state dir with its content: "nothing changed" made checkable."""
    if not state_dir.exists():
        return {}
    return {
        str(p.relative_to(state_dir)): p.read_bytes() for p in state_dir.rglob("*") if p.is_file()
    }


def assert_input_error(result_code: int, err: str, out: str, fragment: str) -> None:
    assert result_code == 2, (result_code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err + out


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_are_refused_everywhere(cli: CLI, guest: Guest, name: str) -> None:
    cli.create_guest("existing", guest)
    before = snapshot(cli.state_dir)
    for verb in ("create", "start", "stop", "delete", "show", "status", "console", "restart"):
        result = cli.run(verb, "--", name) if name.startswith("-") else cli.run(verb, name)
        assert_input_error(result.code, result.err, result.out, "name")
    assert snapshot(cli.state_dir) == before
    assert not list(cli.state_dir.parent.glob("x*"))  # no path escaped the state dir


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--cpus", "0"), "cpus"),
        (("--cpus", "-2"), "cpus"),
        (("--cpus", "many"), "--cpus must be a number"),
        (("--memory", "0"), "memory"),
        (("--memory", "-512"), "memory"),
        (("--disk", "0"), "disk"),
        (("--disk", "1.5x"), "--disk must be a number"),
        (("--kernel", "/does/not/exist"), "kernel /does/not/exist does not exist"),
        (("--network", "carrier-pigeon"), "network.mode"),
        (("--mac", "not-a-mac"), "mac"),
        (("--mac", "01:00:5e:00:00:01"), "multicast"),
        (("--forward", "tcp:70000:22"), "host_port"),
        (("--forward", "ssh"), "invalid port forward"),
        (("--accel", "warp"), "accel"),
        (("--machine", "q35,accel=kvm"), "machine"),
    ],
)
def test_invalid_create_options(cli: CLI, args: tuple[str, ...], fragment: str) -> None:
    result = cli.run("create", "vm1", *args)
    assert_input_error(result.code, result.err, result.out, fragment)
    assert (
        snapshot(cli.state_dir).keys() <= {"history.jsonl"}
        and not (cli.state_dir / "vms" / "vm1").exists()
    )
    assert cli.run("status", "vm1").code == 2


@pytest.mark.parametrize(
    "verb", ["start", "stop", "restart", "delete", "show", "status", "console"]
)
def test_unknown_vm(cli: CLI, guest: Guest, verb: str) -> None:
    cli.create_guest("known", guest)
    before = snapshot(cli.state_dir)
    result = cli.run(verb, "unknown")
    assert_input_error(result.code, result.err, result.out, "no VM named 'unknown'")
    assert snapshot(cli.state_dir) == before


def test_other_bad_options(cli: CLI, guest: Guest) -> None:
    cli.create_guest("known", guest)
    before = snapshot(cli.state_dir)
    for args, fragment in [
        (("list", "--filter", "sleeping"), "unknown state"),
        (("history", "--limit", "0"), "--limit"),
        (("start", "known", "--timeout", "soon"), "--timeout"),
        (("stop", "known", "--timeout", "-1"), "--timeout"),
        (("start", "known", "--accel", "warp"), "accelerator"),
        (("start", "known", "--no-such-flag"), "error:"),
        (("no-such-task",), "error:"),
    ]:
        result = cli.run(*args)
        assert_input_error(result.code, result.err, result.out, fragment)
    assert snapshot(cli.state_dir) == before


@pytest.mark.parametrize("entry", ["clan-vm-manager", "module", "invoke"])
def test_every_entry_point_reports_errors_the_same_way(cli: CLI, entry: str) -> None:
    for args, fragment in [
        (("create", "bad/name"), "invalid VM name"),
        (("status", "nope"), "no VM named"),
    ]:
        result = cli.run(*args, entry=entry, cwd=ROOT)
        assert_input_error(result.code, result.err, result.out, fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--forward", "tcp:²²:22"), "invalid port forward"),
        (("--forward", "tcp:٢٢٢٢:22"), "invalid port forward"),
        (("--cpus", "٢"), "--cpus must be a number"),
        (("--memory", "1e3"), "--memory must be a number"),
        (("--cpus", "1.5"), "--cpus must be a whole number"),
        (("--forward", "tcp:2222:22", "--forward", "tcp:2222:80"), "forwarded twice"),
        (("--mac", "00:00:00:00:00:00"), "not a usable MAC"),
        (("--qemu-arg=-pidfile", "--qemu-arg=/tmp/x"), "-pidfile"),
        (("--qemu-arg=-daemonize",), "-daemonize"),
        (("--qemu-arg=-qmp", "--qemu-arg=tcp:127.0.0.1:4444"), "-qmp"),
        (("--qemu-arg=--monitor", "--qemu-arg=stdio"), "--monitor"),
        (("--qemu-arg=-chardev", "--qemu-arg=file,id=qmp,path=/tmp/x"), "id=qmp"),
        (("--qemu-arg=-netdev", "--qemu-arg=user,id=net0"), "id=net0"),
        (("--qemu-arg=-drive", "--qemu-arg=file=/etc/shadow,id=disk0"), "id=disk0"),
    ],
)
def test_more_invalid_create_options_are_decided_before_anything_changes(
    cli: CLI, guest: Guest, args: tuple[str, ...], fragment: str
) -> None:
    cli.create_guest("known", guest)
    before = snapshot(cli.state_dir)
    result = cli.run(
        "create", "vm1", "--kernel", str(guest.kernel), "--initrd", str(guest.initrd), *args
    )
    assert_input_error(result.code, result.err, result.out, fragment)
    assert snapshot(cli.state_dir) == before


@pytest.mark.parametrize("name", ["my_vm", "web-", "-web", "x" * 64, "a.b", "ümlaut"])
def test_new_names_follow_the_clan_machine_name_rule(cli: CLI, name: str) -> None:
    result = cli.run("create", "--", name) if name.startswith("-") else cli.run("create", name)
    assert_input_error(result.code, result.err, result.out, "name")
    assert not (cli.state_dir / "vms").exists() or list((cli.state_dir / "vms").iterdir()) == []


def test_a_63_character_name_with_inner_dashes_is_fine(cli: CLI) -> None:
    name = "a-" * 31 + "b"
    assert len(name) == 63
    cli.ok("create", name, "--disk", "16")
    assert cli.ok("list", "--json").out.count(name) == 1


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e309", "٣"])
def test_non_finite_and_unicode_timeouts_are_refused_before_anything_happens(
    cli: CLI, guest: Guest, value: str
) -> None:
    cli.create_guest("known", guest)
    before = snapshot(cli.state_dir)
    for verb in ("stop", "start", "restart"):
        result = cli.run(verb, "known", "--timeout", value)
        assert_input_error(result.code, result.err, result.out, "--timeout")
    assert snapshot(cli.state_dir) == before


def test_arguments_that_are_not_utf8_are_refused(cli: CLI, guest: Guest) -> None:
    cli.create_guest("known", guest)
    before = snapshot(cli.state_dir)
    argv = [*cli.command(), "create", "vm1", "--append", b"console=ttyS0 \xff\xfe"]
    proc = subprocess.run(argv, capture_output=True, env=cli.env, check=False)
    err = proc.stderr.decode(errors="replace")
    assert_input_error(proc.returncode, err, proc.stdout.decode(), "not valid UTF-8")
    assert snapshot(cli.state_dir) == before
