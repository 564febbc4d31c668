"""Bad input: one ``error:`` line, exit code 2, no traceback, nothing created or changed."""

from __future__ import annotations

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
