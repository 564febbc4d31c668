"""exec and copy as a user relies on them, against the example guest's real agent, which
also plays a hostile guest here (an endless file, a host key that is a link to /dev/zero,
a ``tar`` that hands over a crafted archive): stdin reaches the command, missing commands
exit 127, nothing is ever left half-written at a destination, nothing is followed on the
host, and every failure is one ``error:`` line."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clan_vm_tasks.state.store import VMPaths
from tests.conftest import CLI, READY, Guest, as_nobody, kill_leftover_qemu
from tests.vmhelpers import PUBLIC_KEY, one_error, peak

pytestmark = [pytest.mark.vm, pytest.mark.xdist_group("guest-io")]


@pytest.fixture(scope="module")
def io_vm(tmp_path_factory: pytest.TempPathFactory, guest: Guest) -> Iterator[CLI]:
    """One example guest for the module, with room for a 100 MB stdin in its RAM disk."""
    cli = CLI(tmp_path_factory.mktemp("guest-io") / "state")
    cli.ok(
        "create", "io", "--cpus", "1", "--memory", "512", "--disk", "64",
        "--kernel", str(guest.kernel), "--initrd", str(guest.initrd),
        "--append", "console=ttyS0 quiet no_timer_check", "--forward", "tcp:auto:22",
    )  # fmt: skip
    cli.ok("start", "io", "--wait-for", READY, "--wait-for-agent", "--timeout", "120")
    try:
        yield cli
    finally:
        kill_leftover_qemu(cli.state_dir)


def sh(cli: CLI, line: str) -> str:
    return cli.ok("exec", "io", "--", "sh", "-c", line).out


def test_exec_right_after_a_plain_start_waits_for_the_agent(cli: CLI, guest: Guest) -> None:
    cli.create_guest("fresh", guest)
    cli.ok("start", "fresh")  # returns once QMP answers: the guest is still booting
    assert cli.ok("exec", "fresh", "--timeout", "120", "--", "uname", "-n").out == "fresh\n"


def test_stdin_reaches_the_command_in_bounded_memory(io_vm: CLI, tmp_path: Path) -> None:
    assert io_vm.ok("exec", "io", "--", "cat", stdin="hi\n").out == "hi\n"
    big = tmp_path / "stdin.bin"
    with big.open("wb") as out:  # 100 MB, more than one agent message
        for _ in range(100):
            out.write(os.urandom(1_000_000))
    expected = hashlib.sha256(big.read_bytes()).hexdigest()
    with big.open("rb") as data:
        wrapper = [*io_vm.command(), "exec", "io", "--timeout", "600", "--", "sha256sum"]
        began = time.monotonic()
        result, rss = peak_with_stdin(io_vm, wrapper, data)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == expected
    assert rss < 150, f"peak RSS {rss} MiB for a 100 MB stdin"
    print(f"100 MB of stdin in {time.monotonic() - began:.1f}s, peak RSS {rss} MiB")
    assert "tmp." not in sh(io_vm, "ls /tmp")  # the spooled input is gone


def peak_with_stdin(
    cli: CLI, argv: list[str], stdin: io.BufferedReader
) -> tuple[subprocess.CompletedProcess[str], int]:
    wrapper = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, file=sys.stderr)\n"
        "sys.exit(p.returncode)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, *argv],
        stdin=stdin,
        capture_output=True,
        text=True,
        env=cli.env,
        timeout=900,
        check=False,
    )
    lines = proc.stderr.strip().splitlines()
    rss = int(lines[-1])
    proc.stderr = "\n".join(lines[:-1])
    return proc, rss


def test_exec_fails_like_a_shell_and_refuses_bad_input_up_front(io_vm: CLI) -> None:
    missing = io_vm.run("exec", "io", "--", "no-such-command", "arg")
    assert "no-such-command: command not found in VM 'io'" in one_error(missing, 127)
    not_runnable = io_vm.run("exec", "io", "--", "/tmp")
    assert "cannot be run" in one_error(not_runnable, 126)
    assert io_vm.run("exec", "io", "--", "sh", "-c", "exit 127").code == 127  # its own 127
    for args in (
        ("exec", "io", "--timeout", "99999999999", "--", "true"),
        ("exec", "io", "--timeout", "1e9", "--", "true"),
        ("exec", "io", "--tty", "--", "sh"),
    ):
        one_error(io_vm.run(*args), 2)
    tty = io_vm.run("exec", "io", "--tty", "--", "sh")
    assert "clan-vm-manager ssh io" in tty.err and "console io" in tty.err
    # A word that is not UTF-8 after --: refused before anything is asked of the guest.
    env = {**io_vm.env}
    raw = subprocess.run(
        [os.fsencode(io_vm.command()[0]), b"exec", b"io", b"--", b"echo", b"\xff"],
        capture_output=True,
        env=env,
        check=False,
    )
    assert raw.returncode == 2 and b"not valid UTF-8" in raw.stderr


def test_an_interactive_shell_over_exec_points_to_ssh_and_console(io_vm: CLI) -> None:
    line = " ".join([*io_vm.command(), "exec", "io", "--", "sh"])
    shown = subprocess.run(
        ["script", "-qc", line, "/dev/null"],
        capture_output=True,
        text=True,
        env=io_vm.env,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert "exec has no terminal" in shown.stdout and "ssh io" in shown.stdout


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may write to (sticky, like /tmp), with a path others can reach."""
    path = Path(tempfile.mkdtemp(prefix="clan-vm-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_copy_out_never_follows_a_link_another_user_planted(
    io_vm: CLI, shared_dir: Path, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    victim = tmp_path / "victim"
    victim.write_text("root's secret\n")
    victim.chmod(0o600)
    sh(io_vm, "echo from the guest > /root/out.txt")
    # The destination and the names the tool used to write through, as links to the victim.
    for name in ("out.txt", ".out.txt.partial", ".out.txt.tmp"):
        as_nobody("ln", "-s", str(victim), str(shared_dir / name))
    io_vm.ok("copy", "io:/root/out.txt", str(shared_dir / "out.txt"))
    assert victim.read_text() == "root's secret\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    written = shared_dir / "out.txt"
    assert not written.is_symlink() and written.read_text() == "from the guest\n"
    assert (shared_dir / ".out.txt.partial").is_symlink()  # not ours: left alone
    assert not [
        p for p in shared_dir.iterdir() if p.name.endswith(".partial") and not p.is_symlink()
    ]


def test_copy_out_of_an_endless_file_is_one_error_and_leaves_the_target(
    io_vm: CLI, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.write_text("unchanged")
    began = time.monotonic()
    result, rss = peak(io_vm, "copy", "io:/dev/zero", str(target))
    assert "larger than 67108864 bytes" in one_error(result) and rss < 150
    print(f"/dev/zero refused after {time.monotonic() - began:.1f}s, peak RSS {rss} MiB")
    limited = io_vm.run("copy", "io:/dev/zero", str(target), "--max-size", "1M")
    assert "larger than 1048576 bytes" in one_error(limited)
    assert target.read_text() == "unchanged" and os.listdir(tmp_path) == ["target"]
    assert io_vm.ok("copy", "io:/proc/version", str(tmp_path / "v")).code == 0  # size 0, finite
    assert (tmp_path / "v").read_text().startswith("Linux version")


def partials_in(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".partial")]


def test_an_interrupted_copy_out_leaves_no_partial_file(io_vm: CLI, tmp_path: Path) -> None:
    sh(io_vm, "head -c 60000000 /dev/urandom > /root/big")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGKILL):
        proc = subprocess.Popen(
            [*io_vm.command(), "copy", "io:/root/big", str(tmp_path / "big")],
            env=io_vm.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not partials_in(tmp_path):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (128 + signum, -signum), (signum, proc.returncode, err)
        if signum == signal.SIGKILL:
            assert partials_in(tmp_path)  # nobody could remove it: the next command does
            io_vm.ok("list")
        assert partials_in(tmp_path) == [], signum
        assert not (tmp_path / "big").exists()
        assert not list((io_vm.state_dir / "partials").iterdir())


def test_a_failed_copy_in_leaves_the_destination_as_it_was(io_vm: CLI, tmp_path: Path) -> None:
    sh(io_vm, "mkdir -p /mnt/small && mount -t tmpfs -o size=1m tmpfs /mnt/small")
    sh(io_vm, "echo old > /mnt/small/dest")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 << 20))
    failed = io_vm.run("copy", str(big), "io:/mnt/small/dest")
    assert "No space left on device" in one_error(failed)
    assert sh(io_vm, "cat /mnt/small/dest; ls -A /mnt/small") == "old\ndest\n"
    absent = io_vm.run("copy", str(big), "io:/no/such/dir/file")
    assert "there is no directory /no/such/dir" in one_error(absent, 2)


DATA_PORT_DEVICE = (
    "for p in /sys/class/virtio-ports/*; do "
    '[ "$(cat $p/name)" = org.clan.vm.data ] && d=/dev/${p##*/}; done; '
)


def sent_in_whole(cli: CLI, source: Path, target: str) -> bool:
    cli.ok("copy", str(source), f"io:{target}")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    return sh(cli, f"sha256sum {target}").split()[0] == digest


def test_a_guest_process_holding_the_data_port_does_not_take_a_copy(
    io_vm: CLI, tmp_path: Path
) -> None:
    """A copy in goes through the data port only when no guest process holds it (a reader a
    killed copy left, or anything else): this one does not read, so a copy sent to it would
    never arrive; the copy goes through the agent instead."""
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(3_000_000))
    hold = (
        f'{DATA_PORT_DEVICE} setsid sh -c "exec 3<$d; exec sleep 300" </dev/null >/dev/null 2>&1 &'
    )
    sh(io_vm, hold + " sleep 1; echo held")
    try:
        assert sent_in_whole(io_vm, blob, "/root/held")
    finally:
        sh(io_vm, "pkill -f 'sleep 300'; true")
    assert sent_in_whole(io_vm, blob, "/root/freed")


def test_a_run_without_a_data_port_copies_through_the_agent(io_vm: CLI, tmp_path: Path) -> None:
    """A VM started by an earlier version has no data port: its copies go through the agent."""
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(1_500_000))
    sock = VMPaths(io_vm.state_dir / "vms" / "io").data_socket
    aside = sock.with_name("data.sock.aside")
    sock.rename(aside)  # the way a start of an earlier version left the VM's run
    try:
        assert sent_in_whole(io_vm, blob, "/root/through-the-agent")
    finally:
        aside.rename(sock)


def make_tree(root: Path) -> None:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a").write_text("a\n")
    (root / "a").chmod(0o600)
    (root / "sub" / "b").write_bytes(os.urandom(300_000))
    (root / "sub" / "deep" / "c").write_text("c\n")
    (root / "sub").chmod(0o751)
    (root / "outside").symlink_to("/etc")  # copied as a link, never followed
    (root / "inner").symlink_to("sub/b")
    os.mkfifo(root / "fifo")


def tree_of(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry below ROOT: (kind, mode, content or link target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            found[str(path.relative_to(root))] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            found[str(path.relative_to(root))] = ("dir", stat.S_IMODE(info.st_mode), "")
        elif stat.S_ISFIFO(info.st_mode):
            found[str(path.relative_to(root))] = ("fifo", stat.S_IMODE(info.st_mode), "")
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = ("file", stat.S_IMODE(info.st_mode), digest)
    return found


def test_trees_go_in_and_come_out_as_they_were(io_vm: CLI, tmp_path: Path) -> None:
    source = tmp_path / "tree"
    source.mkdir()
    make_tree(source)
    io_vm.ok("copy", "-r", str(source), "io:/root/")
    listing = sh(io_vm, "cd /root/tree && ls -l a && readlink outside && readlink inner")
    assert listing.startswith("-rw-------") and listing.endswith("/etc\nsub/b\n")
    assert sh(io_vm, "stat -c %a /root/tree/sub") == "751\n"
    again = io_vm.run("copy", "-r", str(source), "io:/root/")
    assert "/root/tree exists" in one_error(again, 2)
    back = tmp_path / "back"
    io_vm.ok("copy", "-r", "io:/root/tree", str(back))
    assert tree_of(back) == tree_of(source)
    into = tmp_path / "into"
    into.mkdir()
    io_vm.ok("copy", "-r", "io:/root/tree", str(into))  # into an existing directory
    assert tree_of(into / "tree") == tree_of(source)
    exists = io_vm.run("copy", "-r", "io:/root/tree", str(into))
    assert "exists" in one_error(exists, 2)
    assert not partials_in(tmp_path) and not partials_in(into)


def test_a_copy_of_more_than_a_few_seconds_shows_its_progress(io_vm: CLI, tmp_path: Path) -> None:
    # Out of the guest: a copy in goes through the data port, too fast for a progress line.
    sh(io_vm, "head -c 41943040 /dev/urandom > /root/progress.bin")
    line = " ".join([*io_vm.command(), "copy", "io:/root/progress.bin", str(tmp_path / "a")])
    shown = subprocess.run(
        ["script", "-qc", line, "/dev/null"],
        capture_output=True,
        text=True,
        env=io_vm.env,
        timeout=300,
        check=False,
    )
    assert "copying: " in shown.stdout and " MiB of 40.0 MiB (" in shown.stdout, shown.stdout
    quiet = io_vm.ok("copy", "io:/root/progress.bin", str(tmp_path / "b"))  # no terminal
    assert "copying" not in quiet.err
    sh(io_vm, "rm /root/progress.bin")


def test_ssh_to_a_guest_without_sshd_or_users_is_one_line(io_vm: CLI) -> None:
    no_sshd = io_vm.run("ssh", "io", "--", "true")
    assert "has no SSH server" in one_error(no_sshd) and "README" in no_sshd.err
    sh(io_vm, f"mkdir -p /etc/ssh && echo '{PUBLIC_KEY}' > /etc/ssh/ssh_host_ed25519_key.pub")
    no_users = io_vm.run("ssh", "io", "--", "true")
    assert "has no users (no /etc/passwd)" in one_error(no_users)
    sh(io_vm, "echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd")
    no_bob = io_vm.run("ssh", "io", "--user", "bob", "--", "true")
    assert "has no user bob" in one_error(no_bob)
    option = io_vm.run("ssh", "io", "--user", "-oProxyCommand=touch /tmp/x", "--", "true")
    assert "is not a user name" in one_error(option, 2)
    # A host key that is a link to an endless device: read up to its bound, then refused.
    sh(io_vm, "ln -sf /dev/zero /etc/ssh/ssh_host_ed25519_key.pub")
    endless, rss = peak(io_vm, "ssh", "io", "--", "true")
    assert "larger than 8192 bytes" in one_error(endless) and rss < 150
    assert not (io_vm.state_dir / "vms" / "io" / "ssh" / "known_hosts").exists()
    sh(io_vm, "rm -rf /etc/ssh /etc/passwd")
