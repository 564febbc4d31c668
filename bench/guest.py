"""Guest access, measured: how long from ``start`` until a command runs in the guest, how
fast ``copy`` moves a 10 MB file, next to ``scp`` through the forwarded SSH port in the same
run, how long ``ssh NAME -- true`` takes the first time (key install, host key, the
connection) and then (through that connection), next to plain ``ssh`` with the same key,
and what ``exec NAME -- true`` costs next to ``ssh`` over a connection kept open
(ControlMaster), handed to the command server as by default and without it (the Debian
guest; the example guest has no sshd).

    .venv/bin/python bench/guest.py [--rounds N] [--skip-debian]

The Debian image is built (once, cached in .cache/debian) by tests/guests/debian.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import installed  # noqa: E402
from examples import guest as example  # noqa: E402

CLI = str(Path(sys.executable).parent / "clan-vm-manager")
MIB = 1 << 20


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, check=True)


def until_exec(env: dict[str, str], name: str) -> float:
    """Seconds from `start` until `exec NAME -- true` first succeeds."""
    began = time.perf_counter()
    run(env, "start", name)
    while subprocess.run(
        [CLI, "exec", name, "--", "true"], env=env, capture_output=True
    ).returncode:
        time.sleep(0.2)
    return time.perf_counter() - began


def first_exec(env: dict[str, str], name: str, create: list[str], rounds: int) -> float:
    run(env, "create", name, *create)
    times = []
    for _ in range(rounds):
        times.append(until_exec(env, name))
        run(env, "stop", name, "--force")
    return statistics.median(times)


def timed(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - began


def ssh_options(env: dict[str, str], name: str) -> list[str]:
    """The options that reach the guest's sshd through the VM's forward as ``ssh NAME`` does
    (its key, its pinned host key)."""
    state = Path(env["CLAN_VM_STATE_DIR"]) / "vms" / name / "ssh"
    forward = run(env, "status", name, "--json").stdout
    port = forward.split("127.0.0.1:")[1].split("->")[0]
    return [
        "-o", f"Port={port}", "-i", str(state / "id_ed25519"), "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={state / 'known_hosts'}", "-o", f"HostKeyAlias=clan-vm-{name}",
        "-o", "StrictHostKeyChecking=yes",
    ]  # fmt: skip


def paired(results: dict[str, list[float]], ours: str, theirs: str) -> tuple[float, float, float]:
    """Medians of both, and of the ratios of the pairs (drift in load hits both alike)."""
    ratios = [a / b for a, b in zip(results[ours], results[theirs], strict=True)]
    return (
        statistics.median(results[ours]),
        statistics.median(results[theirs]),
        statistics.median(ratios),
    )


def copy_against_scp(env: dict[str, str], name: str, work: Path, rounds: int) -> None:
    blob = work / "blob"
    blob.write_bytes(os.urandom(10 * MIB))
    # The first ssh installs the key, pins the host key and opens the connection (waiting for
    # sshd, which comes up after the agent).
    first = timed([CLI, "ssh", name, "--timeout", "120", "--", "true"], env)
    print(f"(c) first ssh {name} -- true after the agent answered: {first:.2f}s")
    options = ssh_options(env, name)
    scp = ["scp", "-q", *options]
    results: dict[str, list[float]] = {"copy in": [], "scp in": [], "copy out": [], "scp out": []}
    for _ in range(rounds):  # alternating, so drift in machine load hits both alike
        results["copy in"].append(timed([CLI, "copy", str(blob), f"{name}:/root/blob"], env))
        results["scp in"].append(timed([*scp, str(blob), "root@127.0.0.1:/root/blob2"], env))
        results["copy out"].append(timed([CLI, "copy", f"{name}:/root/blob", str(work)], env))
        results["scp out"].append(
            timed([*scp, "root@127.0.0.1:/root/blob2", str(work / "blob2")], env)
        )
    plain = ["ssh", *options, "root@127.0.0.1", "true"]
    ssh_times: dict[str, list[float]] = {"ssh": [], "plain ssh": []}
    for _ in range(rounds * 3):
        ssh_times["ssh"].append(timed([CLI, "ssh", name, "--", "true"], env))
        ssh_times["plain ssh"].append(timed(plain, env))
    ours, theirs = (statistics.median(ssh_times[k]) for k in ("ssh", "plain ssh"))
    print(f"(c) ssh {name} -- true again: {ours:.2f}s, plain ssh {theirs:.2f}s")
    for direction in ("in", "out"):
        ours, theirs, ratio = paired(results, f"copy {direction}", f"scp {direction}")
        print(
            f"(b) 10 MB {direction}: copy {10 / ours:.1f} MB/s ({ours:.2f}s), "
            f"scp {10 / theirs:.1f} MB/s ({theirs:.2f}s), ratio {ratio:.2f}"
            + (" (target <= 1.0)" if direction == "in" else "")
        )


def exec_against_ssh(env: dict[str, str], name: str, work: Path, rounds: int) -> None:
    """``exec NAME -- true`` against ``ssh`` through the forward, over a connection made once
    (a ControlMaster of its own, as a user who runs many ssh commands keeps one)."""
    options = [*ssh_options(env, name), "-o", f"ControlPath={work / 'ssh-control'}"]
    master = subprocess.Popen(
        ["ssh", *options, "-o", "ControlMaster=yes", "-N", "root@127.0.0.1"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(
            ["ssh", *options, "-O", "check", "root@127.0.0.1"], capture_output=True
        ).returncode:
            assert time.monotonic() < deadline and master.poll() is None, "no ssh master"
            time.sleep(0.2)
        ssh = ["ssh", *options, "root@127.0.0.1", "true"]
        exec_ = [CLI, "exec", name, "--", "true"]
        alone = {**env, "CLAN_VM_SERVER": "off"}  # exec that loads the package itself
        timed(ssh, env), timed(exec_, env)  # warm-up; starts the command server
        time.sleep(2)
        results: dict[str, list[float]] = {"exec": [], "alone": [], "ssh": []}
        for _ in range(rounds * 5):
            results["exec"].append(timed(exec_, env))
            results["alone"].append(timed(exec_, alone))
            results["ssh"].append(timed(ssh, env))
        ours, theirs, ratio = paired(results, "exec", "ssh")
        print(
            f"(d) exec {name} -- true: {ours * 1000:.0f} ms; ssh over a reused connection "
            f"{theirs * 1000:.0f} ms; ratio {ratio:.2f} (target <= 1.0; median of {rounds * 5})"
        )
        ours, theirs, ratio = paired(results, "alone", "ssh")
        print(
            f"    without the command server (CLAN_VM_SERVER=off): {ours * 1000:.0f} ms; "
            f"ratio {ratio:.2f}"
        )
    finally:
        master.terminate()
        master.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-debian", action="store_true")
    args = parser.parse_args()
    installed.compile_package()
    guest = ROOT / ".cache" / "guest"
    example.build(guest)
    work = Path(tempfile.mkdtemp(prefix="clan-vm-bench-guest-"))
    env = {**os.environ, "CLAN_VM_STATE_DIR": str(work / "state"), "CLAN_VM_CONFIG": "/nonexistent"}
    try:
        busybox = [
            "--cpus", "1", "--memory", "192", "--disk", "64",
            "--kernel", str(guest / "vmlinuz"), "--initrd", str(guest / "initrd"),
            "--append", example.KERNEL_APPEND,
        ]  # fmt: skip
        seconds = first_exec(env, "bb", busybox, args.rounds)
        print(f"(a) start to first exec, example guest: {seconds:.1f}s (median of {args.rounds})")
        if args.skip_debian:
            return
        from tests.guests.debian import ensure_image

        image = ensure_image()
        debian = [
            "--cpus", "2", "--memory", "512", "--from-image", str(image.disk),
            "--kernel", str(image.kernel), "--initrd", str(image.initrd),
            "--append", image.append, "--forward", "tcp:auto:22",
        ]  # fmt: skip
        seconds = first_exec(env, "deb", debian, args.rounds)
        print(f"(a) start to first exec, Debian 12: {seconds:.1f}s (median of {args.rounds})")
        until_exec(env, "deb")
        copy_against_scp(env, "deb", work, args.rounds)
        exec_against_ssh(env, "deb", work, args.rounds)
        run(env, "stop", "deb", "--force")
    finally:
        for name in ("bb", "deb"):
            subprocess.run([CLI, "stop", name, "--force"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
