"""The command line at virsh's pace: each figure a ratio against virsh in the same run.

    sudo .venv/bin/python bench/cli.py [--rounds N]

A libvirtd of the benchmark's own (``tests/libvirt/daemons``' host B, in a mount
namespace of its own; virsh reaches it on its socket, as virsh reaches a local daemon)
holds 200 defined domains and one running (the example guest).

(f) ``status NAME`` of a running VM whose guest runs its agent, and of one whose guest runs
    none (the example guest with ``clan.noagent``), against ``virsh domstate`` of the
    running domain (target: at most 5x).
(g) ``list --json`` with 200 VMs against ``virsh list --all`` over 200 defined domains
    (target: at most 2.0x).
(h) completing a VM name: what the bash script runs on a Tab after ``clan-vm-manager status ``
    (outside a flake), against ``virsh list --name`` (target: at most 1.5x, under 0.15 s).
(i) peak RSS of ``list`` (200 VMs) and ``status`` (target: at most 28 and 38 MiB).

Commands alternate with their baseline (A B A B ...) and each ratio is the median of the
ratios of the pairs, so drift in the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]

from bench import installed  # noqa: E402
from clan_vm_tasks import lifecycle  # noqa: E402
from clan_vm_tasks.cli import completion  # noqa: E402
from examples import guest as example_guest  # noqa: E402
from tests.libvirt import daemons  # noqa: E402

CLI = str(Path(sys.executable).parent / "clan-vm-manager")
READY = example_guest.READY_LINE
SETTLE = 15.0  # seconds for three freshly booted TCG guests to go quiet
DOMAIN = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>{memory}</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type>{boot}</os>
<devices><serial type='pty'/><console type='pty'/></devices></domain>"""


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    began = time.perf_counter()
    subprocess.run(
        argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - began


def paired(
    rounds: int, a: list[str], b: list[str], env: dict[str, str], cwd: Path
) -> tuple[float, ...]:
    """Medians of A's and B's wall time and of the pairs' ratios A/B (run in CWD)."""
    timed(a, env, cwd), timed(b, env, cwd)  # warm-up: caches as a user's second call finds
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(timed(a, env, cwd))
        tb.append(timed(b, env, cwd))
    ratios = [x / y for x, y in zip(ta, tb, strict=True)]
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def peak_rss_mib(argv: list[str], env: dict[str, str]) -> float:
    """Peak RSS of one command, from a fresh helper process so earlier children do not count."""
    code = (
        "import resource,subprocess,sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL,"
        " stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True)
    return int(out.stdout) / 1024


def libvirt_host(work: Path, guest: Path) -> tuple[daemons.Host, list[str]]:
    """Host B with 200 defined domains and the example guest running; virsh's argv for it."""
    host = daemons.host_b(daemons.SSH(work), work / "hostb")
    pid = (work / "hostb" / "libvirtd.pid").read_text().strip()
    virsh = [
        "virsh",
        "-q",
        "-c",
        f"qemu:///system?socket=/proc/{pid}/root/run/libvirt/libvirt-sock",
    ]
    for i in range(200):
        xml = work / "domain.xml"
        xml.write_text(DOMAIN.format(name=f"bench-defined-{i:03}", memory=64, boot=""))
        daemons.virsh(virsh, "define", str(xml))
    boot = (
        f"<kernel>{guest / 'vmlinuz'}</kernel><initrd>{guest / 'initrd'}</initrd>"
        f"<cmdline>{example_guest.KERNEL_APPEND}</cmdline>"
    )
    (work / "domain.xml").write_text(DOMAIN.format(name="bench-running", memory=192, boot=boot))
    daemons.virsh(virsh, "create", str(work / "domain.xml"))  # transient, running
    return host, virsh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    installed.compile_package()
    problem = daemons.missing()
    if problem:
        raise SystemExit(f"cannot run: {problem}")
    guest = Path(os.environ.get("CLAN_VM_TEST_GUEST", ROOT / ".cache" / "guest"))
    if not (guest / "initrd").exists():
        example_guest.build(guest)
    work = Path(tempfile.mkdtemp(prefix="clan-vm-bench-cli-"))
    host = None
    env = {
        **os.environ,
        "CLAN_VM_STATE_DIR": str(work / "state"),
        "CLAN_VM_CONFIG": "/nonexistent",
    }
    try:
        host, virsh = libvirt_host(work, guest)
        for name, append in (("talk", ""), ("mute", " clan.noagent")):
            subprocess.run(
                [CLI, "create", name, "--cpus", "1", "--memory", "192", "--disk", "64",
                 "--kernel", str(guest / "vmlinuz"), "--initrd", str(guest / "initrd"),
                 "--append", example_guest.KERNEL_APPEND + append],
                env=env, check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            subprocess.run(
                [CLI, "start", name, "--wait-for", READY, "--timeout", "120"],
                env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        subprocess.run([CLI, "status", "talk", "--wait-agent"], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        time.sleep(SETTLE)  # the guests' boots done: what is measured is the command alone
        domstate = [*virsh, "domstate", "bench-running"]
        for name, what in (("talk", "with a guest agent"), ("mute", "without one")):
            a, b, r = paired(args.rounds, [CLI, "status", name], domstate, env, work)
            print(
                f"(f) status of a running VM {what}: {a * 1000:.0f} ms, virsh domstate "
                f"{b * 1000:.0f} ms, ratio {r:.2f} (target <= 5)"
            )
        status_rss = peak_rss_mib([CLI, "status", "talk"], env)
        for name in ("talk", "mute"):
            subprocess.run([CLI, "stop", name, "--force"], env=env, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
        store = lifecycle.open_store(lifecycle.Settings(state_dir=work / "state"))
        for i in range(200 - len(store.names())):
            lifecycle.create(store, lifecycle.VMConfig(name=f"vm{i:03}", disk_size=16))
        a, b, r = paired(args.rounds, [CLI, "list", "--json"], [*virsh, "list", "--all"], env, work)
        print(
            f"(g) list --json, 200 VMs: {a * 1000:.0f} ms, virsh list --all over 200 domains "
            f"{b * 1000:.0f} ms, ratio {r:.2f} (target <= 2.0)"
        )
        python, code = completion.answering()
        tab = [python, "-S", "-c", code, "__complete", "bash", "clan-vm-manager status "]
        tab_env = {**env, "CLAN_VM_COMPLETE": completion.table(), "CLAN_VM_WORDBREAKS": "=:"}
        answer = subprocess.run(tab, env=tab_env, capture_output=True, text=True, cwd=work)
        assert len(answer.stdout.split()) == 200, answer
        a, b, r = paired(args.rounds, tab, [*virsh, "list", "--name"], tab_env, work)
        print(
            f"(h) completing a VM name (200 VMs): {a * 1000:.0f} ms, virsh list --name "
            f"{b * 1000:.0f} ms, ratio {r:.2f} (target <= 1.5, and under 150 ms)"
        )
        list_rss = peak_rss_mib([CLI, "list"], env)
        print(
            f"(i) peak RSS: list (200 VMs) {list_rss:.1f} MiB (target <= 28), status "
            f"{status_rss:.1f} MiB (target <= 38)"
        )
    finally:
        with contextlib.suppress(Exception):
            subprocess.run([CLI, "stop", "talk", "--force"], env=env, capture_output=True)
            subprocess.run([CLI, "stop", "mute", "--force"], env=env, capture_output=True)
        if host is not None:
            daemons.stop(host)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
