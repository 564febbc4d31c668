"""Benchmarks: each figure is a ratio against a baseline measured in the same run.

    .venv/bin/python bench/run.py [--rounds N]

(a) boot: ``clan-vm-manager start --wait-for READY`` against raw
    ``qemu-system-x86_64`` with the same kernel, initrd, machine type and devices,
    both timed until the guest's ready line (target: ratio <= 1.05).
(b) list: ``clan-vm-manager list --json`` with 200 registered VMs against
    ``python -c 'import invoke'`` (target: at most 25% more).
(c) footprint: peak RSS of CLI calls, and processes left running per VM beside
    QEMU (target: none).

``--against PATH`` also measures another ``clan-vm-manager`` (an earlier checkout's
``.venv/bin/clan-vm-manager``) in the same rounds for (a) and (b), alternating with this
one, and prints this one's time as a ratio to it: before and after a change, in one run.
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
from clan_vm_tasks.backends.qemu.argv import agent_args  # noqa: E402
from examples import guest as example_guest  # noqa: E402

READY = example_guest.READY_LINE
BIN = Path(sys.executable).parent
CLI = str(BIN / "clan-vm-manager")
APPEND = example_guest.KERNEL_APPEND


def timed(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def raw_qemu_boot(guest: Path, disk: Path) -> float:
    """Raw QEMU, same kernel/initrd/machine/devices, serial on stdout, until the ready line."""
    argv = [
        "qemu-system-x86_64",
        "-machine",
        "q35,accel=tcg",
        "-cpu",
        "max",
        "-smp",
        "1",
        "-m",
        "192M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-kernel",
        str(guest / "vmlinuz"),
        "-initrd",
        str(guest / "initrd"),
        "-append",
        APPEND,
        "-drive",
        f"file={disk},if=none,id=disk0,format=qcow2",
        "-device",
        "virtio-blk-pci,drive=disk0",
        "-netdev",
        "user,id=net0",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-serial",
        "stdio",
        # The guest-agent channel and data port every VM of the tool gets (the guest starts
        # its agent).
        *agent_args(disk.with_name("raw-agent"), disk.with_name("raw-data.sock")),
    ]
    disk.with_name("raw-data.sock").unlink(missing_ok=True)
    for fifo in (disk.with_name("raw-agent.in"), disk.with_name("raw-agent.out")):
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo, 0o600)  # as the tool makes them: part of what a start costs
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    seen = b""
    while READY.encode() not in seen:
        chunk = proc.stdout.read1(4096)
        if not chunk:
            raise SystemExit("raw QEMU exited before the ready line")
        seen += chunk
    elapsed = time.perf_counter() - began
    proc.kill()
    proc.wait()
    return elapsed


def bench_boot(
    rounds: int, guest: Path, env: dict[str, str], other: str | None = None
) -> tuple[float, float, float | None]:
    subprocess.run(
        [
            CLI,
            "create",
            "bench",
            "--cpus",
            "1",
            "--memory",
            "192",
            "--disk",
            "64",
            "--kernel",
            str(guest / "vmlinuz"),
            "--initrd",
            str(guest / "initrd"),
            "--append",
            APPEND,
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    disk = Path(env["CLAN_VM_STATE_DIR"]) / "raw.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    tool, raw, against = [], [], []
    for _ in range(rounds):  # interleaved, so drift in machine load hits both alike
        raw.append(raw_qemu_boot(guest, disk))
        for cli, times in ((CLI, tool), (other, against)):
            if cli is None:
                continue
            start = [cli, "start", "bench", "--wait-for", READY, "--timeout", "120"]
            times.append(timed(start, env))
            subprocess.run(
                [CLI, "stop", "bench", "--force"], env=env, check=True, stdout=subprocess.DEVNULL
            )
    paired = statistics.median(t / r for t, r in zip(tool, raw, strict=True))
    versus = ""
    if against:
        other = statistics.median(t / o for t, o in zip(tool, against, strict=True))
        versus = f"; this one / the other {other:.3f}"
    print(
        f"    median of the rounds' own ratios (load drifts alike in a pair): {paired:.3f}{versus}"
    )
    return statistics.median(tool), statistics.median(raw), _median(against)


def _median(times: list[float]) -> float | None:
    return statistics.median(times) if times else None


def bench_list(
    rounds: int, env: dict[str, str], other: str | None = None
) -> tuple[float, float, float | None]:
    sys.path.insert(0, str(ROOT))
    from clan_vm_tasks import lifecycle

    store = lifecycle.open_store(lifecycle.Settings(state_dir=Path(env["CLAN_VM_STATE_DIR"])))
    for i in range(200):
        if not store.exists(f"vm{i:03}"):
            lifecycle.create(store, lifecycle.VMConfig(name=f"vm{i:03}", disk_size=16))
    tool, baseline, against = [], [], []
    for _ in range(rounds):
        baseline.append(timed([sys.executable, "-c", "import invoke"], env))
        tool.append(timed([CLI, "list", "--json"], env))
        if other is not None:
            against.append(timed([other, "list", "--json"], env))
    return statistics.median(tool), statistics.median(baseline), _median(against)


def _against(tool: float, other: float | None) -> str:
    if other is None:
        return ""
    return f"; the other clan-vm-manager {other:.3f}s, this one / it {tool / other:.3f}"


def peak_rss_mib(argv: list[str], env: dict[str, str]) -> float:
    """Peak RSS of one command, from a fresh helper process so earlier children do not count."""
    code = (
        "import resource,subprocess,sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL,"
        " stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True
    )
    return int(out.stdout) / 1024


def resident_helpers(state_dir: Path) -> list[str]:
    """Processes other than QEMU that mention this state dir or this checkout."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # This checkout's or this state dir's: not the commands of other checkouts.
        mentions_us = str(state_dir) in cmdline or str(ROOT) in cmdline
        is_other = proc.name.isdigit() and int(proc.name) != os.getpid()
        if is_other and mentions_us and "qemu-system" not in cmdline:
            found.append(cmdline)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", metavar="PATH", help="another clan-vm-manager to compare")
    args = parser.parse_args()
    installed.compile_package()
    guest = Path(os.environ.get("CLAN_VM_TEST_GUEST", ROOT / ".cache" / "guest"))
    if not (guest / "initrd").exists():
        example_guest.build(guest)
    work = Path(tempfile.mkdtemp(prefix="clan-vm-bench-"))
    env = {**os.environ, "CLAN_VM_STATE_DIR": str(work / "boot"), "CLAN_VM_CONFIG": "/nonexistent"}
    try:
        tool, raw, other = bench_boot(args.rounds, guest, env, args.against)
        print(
            f"(a) boot to ready line: tool {tool:.2f}s, raw QEMU {raw:.2f}s, "
            f"ratio {tool / raw:.3f} (target <= 1.05){_against(tool, other)}"
        )
        subprocess.run([CLI, "start", "bench"], env=env, check=True, stdout=subprocess.DEVNULL)
        helpers = resident_helpers(work / "boot")
        rss = {
            verb: peak_rss_mib([CLI, *argv], env)
            for verb, argv in (
                ("list", ["list"]),
                ("status", ["status", "bench"]),
                ("show", ["show", "bench"]),
            )
        }
        subprocess.run(
            [CLI, "stop", "bench", "--force"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        list_env = {**env, "CLAN_VM_STATE_DIR": str(work / "list")}
        tool, base, other = bench_list(max(args.rounds * 4, 10), list_env, args.against)
        print(
            f"(b) list --json, 200 VMs: tool {tool * 1000:.0f}ms, "
            f"import invoke {base * 1000:.0f}ms, "
            f"ratio {tool / base:.3f} (target <= 1.25){_against(tool, other)}"
        )
        print(
            "(c) peak RSS: "
            + ", ".join(f"{k} {v:.0f} MiB" for k, v in rss.items())
            + f"; processes per running VM beside QEMU: {len(helpers)} (target 0)"
        )
        for helper in helpers:
            print(f"    resident: {helper}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
