"""Where a flake's paths lead, not how they are spelled: files it names must really be in the
store (no '..', no link out of it, checked again once built), and consent to share a host
directory is for that directory (its device and inode), which is what the launch hands
over, whatever its name leads to a moment later."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import READY, Result
from tests.nix.test_trust import edit
from tests.nix_fixtures import NixCLI, ncli, needs_nix, own_flake

__all__ = ["ncli", "own_flake"]  # fixtures
pytestmark = needs_nix
SYSTEM = "x86_64-linux"


def one_error(result: Result, code: int) -> str:
    """The one error line (a build's progress lines aside), exit CODE, no crash of ours."""
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert result.code == code and len(errors) == 1, result
    assert "Traceback" not in result.err and "internal error" not in result.err
    return errors[0]


def link_derivation(target: str) -> str:
    """A derivation whose output is a symbolic link to TARGET (never built before)."""
    return (
        f'derivation {{ name = "link-{uuid.uuid4().hex[:12]}"; system = "x86_64-linux"; '
        f'builder = "${{self}}/busybox"; args = [ "ln" "-s" "{target}" '
        '(builtins.placeholder "out") ]; }'
    )


def failed_events(ncli: NixCLI, name: str) -> list[dict[str, str]]:
    events = json.loads(ncli.ok("history", "--json").out)
    return [e for e in events if e["vm"] == name and e["result"] == "failed"]


@pytest.mark.parametrize(
    ("attribute", "value", "words"),
    [
        ("baseImage", '"/nix/store/../../etc/shadow"', "a path with '..'"),
        ("kernel", '"${self}/../../../etc/hostname"', "a path with '..'"),
        # A store path that is a link to a host file: seen once it is built.
        ("baseImage", '"${LINK}"', "which leads to /etc/hostname, a file outside the Nix store"),
        ("kernel", '"${LINK}"', "which leads to /etc/hostname, a file outside the Nix store"),
    ],
)
def test_a_flake_may_name_only_what_is_really_in_the_store(
    ncli: NixCLI, own_flake: Path, attribute: str, value: str, words: str
) -> None:
    value = value.replace("${LINK}", "${" + link_derivation("/etc/hostname") + "}")
    if attribute == "kernel":
        edit(own_flake, 'kernel = "${self}/vmlinuz";', f"kernel = {value};")
    else:
        edit(own_flake, "bootTest.expect = ", f"baseImage = {value};\n        bootTest.expect = ")
    result = ncli.run("create", "alpha", "--flake", str(own_flake))
    line = one_error(result, 2)
    assert line.startswith(f"error: clanVms.{SYSTEM}.alpha.{attribute} is /nix/store/")
    assert words in line
    assert not (ncli.state_dir / "vms" / "alpha").exists()
    [event] = failed_events(ncli, "alpha")
    assert event["action"] == "create" and words in event["details"]


def test_an_existing_vm_refuses_a_definition_that_leads_out_of_the_store(
    ncli: NixCLI, own_flake: Path
) -> None:
    ncli.ok("create", "alpha", "--flake", str(own_flake))
    before = (ncli.state_dir / "vms" / "alpha" / "config.json").read_text()
    link = "${" + link_derivation("/etc") + "}/hostname"  # through a link to a host directory
    edit(own_flake, 'kernel = "${self}/vmlinuz";', f'kernel = "{link}";')
    refused = ncli.run("start", "alpha", "--flake", str(own_flake))
    assert "which leads to /etc/hostname" in one_error(refused, 2)
    assert (ncli.state_dir / "vms" / "alpha" / "config.json").read_text() == before
    assert [e["action"] for e in failed_events(ncli, "alpha")] == ["start"]


def share_flake(own_flake: Path, source: Path) -> None:
    share = f'shares.data = {{ source = "{source}"; type = "virtiofs"; }};'
    edit(own_flake, "bootTest.expect = ", f"{share}\n        bootTest.expect = ")


def seen_in_guest(ncli: NixCLI) -> str:
    mount = "mkdir -p /mnt/d && mount -t virtiofs data /mnt/d && cat /mnt/d/marker"
    return ncli.ok("exec", "alpha", "--timeout", "60", "--", "sh", "-c", mount).out


def needs_virtiofs() -> None:
    from tests.vm.test_virtiofs import _unable

    problem = _unable()
    if problem:
        pytest.skip(problem)


@pytest.mark.vm
def test_consent_is_for_the_directory_a_share_leads_to(
    ncli: NixCLI, own_flake: Path, tmp_path: Path
) -> None:
    needs_virtiofs()
    first, other, link = tmp_path / "first", tmp_path / "other", tmp_path / "link"
    for directory in (first, other):
        directory.mkdir()
        (directory / "marker").write_text(f"{directory.name}\n")
    link.symlink_to(first)
    share_flake(own_flake, link)
    flake = str(own_flake)
    asked = ncli.run("create", "alpha", "--flake", flake)
    assert f"would let the VM see {first} (read-only, as {link})" in one_error(asked, 2)
    ncli.ok("create", "alpha", "--flake", flake, "--allow-shares")
    start = ("start", "alpha", "--flake", flake, "--wait-for", READY, "--wait-for-agent")
    ncli.ok(*start, "--timeout", "120")  # allowed before: not asked again
    assert seen_in_guest(ncli) == "first\n"
    ncli.ok("stop", "alpha", "--force")

    link.unlink()
    link.symlink_to(other)  # the same name now leads elsewhere: asked again
    swapped = ncli.run(*start, "--timeout", "120")
    line = one_error(swapped, 2)
    assert f"see {other} (read-only, as {link})" in line and "not what was allowed" in line
    first.rename(tmp_path / "kept")  # still there: the new one cannot reuse its inode
    first.mkdir()  # the same path, another directory: asked again too
    (first / "marker").write_text("replaced\n")
    link.unlink()
    link.symlink_to(first)
    assert "--allow-shares" in one_error(ncli.run(*start, "--timeout", "120"), 2)
    assert json.loads(ncli.ok("status", "alpha", "--json").out)["state"] == "stopped"
    ncli.ok(*start, "--timeout", "120", "--allow-shares")
    assert seen_in_guest(ncli) == "replaced\n"
    ncli.ok("stop", "alpha", "--force")


@pytest.mark.vm
@pytest.mark.parametrize("kind", ["9p", "virtiofs"])
def test_the_launch_shares_the_directory_that_was_checked(
    ncli: NixCLI, own_flake: Path, tmp_path: Path, kind: str
) -> None:
    """The name is looked up again at launch only to open it; a directory swapped in between
    the check and the launch is refused, and QEMU gets the opened directory itself."""
    if kind == "virtiofs":
        needs_virtiofs()
    if shutil.which("strace") is None:
        pytest.skip("needs strace")
    checked, swapped, link = tmp_path / "checked", tmp_path / "swapped", tmp_path / "link"
    checked.mkdir()
    swapped.mkdir()
    link.symlink_to(checked)
    share = f'shares.data = {{ source = "{link}"; type = "{kind}"; }};'
    edit(own_flake, "bootTest.expect = ", f"{share}\n        bootTest.expect = ")
    flake = str(own_flake)
    ncli.ok("create", "alpha", "--flake", flake, "--allow-shares")
    log = tmp_path / "strace.log"
    # The launch's open of the share is held for 5 s; meanwhile the link is swapped.
    argv = [
        "strace", "-qq", "-o", str(log), "-e", "trace=openat",
        "-e", "inject=openat:delay_enter=5000000:when=1", "-P", str(link),
        *ncli.command(), "start", "alpha", "--flake", flake, "--timeout", "120",
    ]  # fmt: skip

    def swap() -> None:
        deadline = time.monotonic() + 120
        while "openat" not in (log.read_text() if log.exists() else ""):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        link.unlink()
        link.symlink_to(swapped)

    swapper = threading.Thread(target=swap)
    swapper.start()
    raced = subprocess.run(argv, env=ncli.env, capture_output=True, text=True, timeout=300)
    swapper.join()
    assert link.resolve() == swapped, "the launch never opened the share"
    line = [x for x in raced.stderr.splitlines() if x.startswith("error:")]
    assert raced.returncode == 2, raced.stderr
    assert line and "no longer leads to the directory that was checked" in line[0]
    assert f"but to {swapped}" in line[0]
    assert json.loads(ncli.ok("status", "alpha", "--json").out)["state"] == "stopped"
    # Unhindered, only the command itself names the share (to check it, then to open it
    # once): QEMU is handed the opened directory, virtiofsd is started in it.
    link.unlink()
    link.symlink_to(checked)
    names = tmp_path / "names.log"
    traced = [
        "strace", "-f", "--seccomp-bpf", "-qq", "-o", str(names), "-e", "trace=%file",
        *ncli.command(), "start", "alpha", "--flake", flake, "--timeout", "120",
    ]  # fmt: skip
    tracer = subprocess.Popen(traced, env=ncli.env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while json.loads(ncli.ok("status", "alpha", "--json").out)["state"] != "running":
            assert tracer.poll() is None and time.monotonic() < deadline, "it never started"
            time.sleep(0.5)
        pid = json.loads(ncli.ok("status", "alpha", "--json").out)["pid"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        if kind == "9p":  # QEMU holds the opened directory, not a path of it
            fsdev = next(a for a in cmdline if a.startswith("local,id=fs-data"))
            assert ",path=/proc/self/fd/" in fsdev and str(link) not in fsdev
            fd = fsdev.split("path=/proc/self/fd/")[1].split(",")[0]
            assert os.path.realpath(f"/proc/{pid}/fd/{fd}") == str(checked)
        ncli.ok("stop", "alpha", "--force")  # QEMU and virtiofsd end, and so does strace
        tracer.wait(timeout=120)
    finally:
        tracer.kill()
    naming = [line.split()[0] for line in names.read_text().splitlines() if f'"{link}' in line]
    assert naming and len(set(naming)) == 1, sorted(set(naming))
