"""Guest access, measured: how long from ``start`` until a command runs in the guest, how
fast ``copy`` moves a 10 MB file, next to ``scp`` through the forwarded SSH port in the same
run, and how long ``ssh NAME -- true`` takes the first time (key install, host key, the
connection) and then (through that connection), next to plain ``ssh`` with the same key
(the Debian guest; the example guest has no sshd).

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


def copy_against_scp(env: dict[str, str], name: str, work: Path, rounds: int) -> None:
    blob = work / "blob"
    blob.write_bytes(os.urandom(10 * MIB))
    # The first ssh installs the key, pins the host key and opens the connection (waiting for
    # sshd, which comes up after the agent).
    first = timed([CLI, "ssh", name, "--timeout", "120", "--", "true"], env)
    print(f"(c) first ssh {name} -- true after the agent answered: {first:.2f}s")
    state = Path(env["CLAN_VM_STATE_DIR"]) / "vms" / name / "ssh"
    forward = run(env, "status", name, "--json").stdout
    port = forward.split("127.0.0.1:")[1].split("->")[0]
    scp = [
        "scp", "-q", "-P", port, "-i", str(state / "id_ed25519"),
        "-o", f"UserKnownHostsFile={state / 'known_hosts'}", "-o", f"HostKeyAlias=clan-vm-{name}",
        "-o", "StrictHostKeyChecking=yes",
    ]  # fmt: skip
    results: dict[str, list[float]] = {"copy in": [], "scp in": [], "copy out": [], "scp out": []}
    for _ in range(rounds):  # alternating, so drift in machine load hits both alike
        results["copy in"].append(timed([CLI, "copy", str(blob), f"{name}:/root/blob"], env))
        results["scp in"].append(timed([*scp, str(blob), "root@127.0.0.1:/root/blob2"], env))
        results["copy out"].append(timed([CLI, "copy", f"{name}:/root/blob", str(work)], env))
        results["scp out"].append(
            timed([*scp, "root@127.0.0.1:/root/blob2", str(work / "blob2")], env)
        )
    plain = [
        "ssh", "-p", port, "-i", str(state / "id_ed25519"), "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={state / 'known_hosts'}", "-o", f"HostKeyAlias=clan-vm-{name}",
        "-o", "StrictHostKeyChecking=yes", "root@127.0.0.1", "true",
    ]  # fmt: skip
    ssh_times: dict[str, list[float]] = {"ssh": [], "plain ssh": []}
    for _ in range(rounds * 3):
        ssh_times["ssh"].append(timed([CLI, "ssh", name, "--", "true"], env))
        ssh_times["plain ssh"].append(timed(plain, env))
    ours, theirs = (statistics.median(ssh_times[k]) for k in ("ssh", "plain ssh"))
    print(f"(c) ssh {name} -- true again: {ours:.2f}s, plain ssh {theirs:.2f}s")
    for direction in ("in", "out"):
        ours = statistics.median(results[f"copy {direction}"])
        theirs = statistics.median(results[f"scp {direction}"])
        print(
            f"(b) 10 MB {direction}: copy {10 / ours:.1f} MB/s ({ours:.2f}s), "
            f"scp {10 / theirs:.1f} MB/s ({theirs:.2f}s), ratio {ours / theirs:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-debian", action="store_true")
    args = parser.parse_args()
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
        run(env, "stop", "deb", "--force")
    finally:
        for name in ("bb", "deb"):
            subprocess.run([CLI, "stop", name, "--force"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
