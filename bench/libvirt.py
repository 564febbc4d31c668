"""Benchmarks of VMs on libvirt hosts, each a ratio against virsh measured in the same run.

    sudo .venv/bin/python bench/libvirt.py [--rounds N]

Brings up the tests' hosts (``tests/libvirt/daemons``): host A, this machine's libvirtd,
reached over qemu+ssh:// through a local sshd, and host B, an independent libvirtd in
its own mount namespace, also over qemu+ssh://.

(d) list: ``clan-vm-manager list --json`` over 100 VMs, 34 local, 33 on host A and 33 on
    host B, against ``virsh list --all`` of the slower of those hosts in each round (target:
    at most 1.2x), and of both, one after the other, as a user without the tool would run it.
(e) start: ``clan-vm-manager start --wait-for READY`` of the example guest on host B
    against ``virsh start`` plus waiting for the same line in the guest's serial log
    (target: at most 1.00x).
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
# This file has the libvirt module's name: its directory must not shadow that module.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]

from bench import installed  # noqa: E402
from clan_vm_tasks import lifecycle  # noqa: E402
from examples import guest as example_guest  # noqa: E402
from tests.libvirt import daemons  # noqa: E402

READY = example_guest.READY_LINE
CLI = str(Path(sys.executable).parent / "clan-vm-manager")
PREFIX = "bench-lv"


def timed(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def bench_list(rounds: int, env: dict[str, str], a: daemons.Host, b: daemons.Host) -> None:
    store = lifecycle.open_store(lifecycle.Settings.load())
    for i in range(100):
        host = (None, "a-ssh", "b")[i % 3]
        lifecycle.create(store, lifecycle.VMConfig(name=f"{PREFIX}{i:03}", disk_size=16, host=host))
    listed = json.loads(
        subprocess.run([CLI, "list", "--json"], env=env, capture_output=True, check=True).stdout
    )
    assert len(listed) == 100 and {r["state"] for r in listed} == {"stopped"}, listed[:3]
    tool, slowest, both = [], [], []
    for _ in range(rounds):  # interleaved: drift in the machine's load hits all alike
        tool.append(timed([CLI, "list", "--json"], env))
        one_a = timed([*a.virsh, "list", "--all"], env)
        one_b = timed([*b.virsh, "list", "--all"], env)
        slowest.append(max(one_a, one_b))
        both.append(one_a + one_b)
    t, o, s = (statistics.median(x) for x in (tool, slowest, both))
    ratio = statistics.median(x / y for x, y in zip(tool, slowest, strict=True))
    print(
        f"(d) list --json, 100 VMs (34 local, 33+33 on two hosts over ssh): tool {t * 1000:.0f}ms; "
        f"virsh list --all of the slower host {o * 1000:.0f}ms (ratio {ratio:.2f}, target <= 1.2), "
        f"of both hosts one after the other {s * 1000:.0f}ms (ratio {t / s:.2f}); "
        f"median of {rounds}"
    )


def _wait_in_log(log: Path, began: float) -> float:
    while True:
        try:
            if READY.encode() in log.read_bytes():
                return time.perf_counter() - began
        except OSError:
            pass
        if time.perf_counter() - began > 120:
            raise SystemExit(f"{READY!r} never appeared in {log}")
        time.sleep(0.02)


def bench_start(rounds: int, env: dict[str, str], b: daemons.Host, images: Path) -> None:
    guest = Path(os.environ.get("CLAN_VM_TEST_GUEST", ROOT / ".cache" / "guest"))
    name = f"{PREFIX}-boot"
    common = ["--cpus", "1", "--memory", "192", "--disk", "64", "--accel", "tcg"]
    boot = ["--kernel", str(guest / "vmlinuz"), "--initrd", str(guest / "initrd")]
    subprocess.run(
        [
            CLI,
            "create",
            name,
            "--host",
            "b",
            *common,
            *boot,
            "--append",
            example_guest.KERNEL_APPEND,
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    log = images / f"{name}.console.log"  # host B's files, visible here: the baseline's shortcut
    tool, raw = [], []
    for _ in range(rounds):
        tool.append(timed([CLI, "start", name, "--wait-for", READY, "--timeout", "120"], env))
        subprocess.run([CLI, "stop", name, "--force"], env=env, check=True, capture_output=True)
        log.unlink(missing_ok=True)
        began = time.perf_counter()
        subprocess.run([*b.virsh, "start", name], check=True, capture_output=True)
        raw.append(_wait_in_log(log, began))
        subprocess.run([*b.virsh, "destroy", name], check=True, capture_output=True)
    t, r = statistics.median(tool), statistics.median(raw)
    print(
        f"(e) start --wait-for READY on host B over ssh: tool {t:.2f}s, virsh start + the same "
        f"line in the serial log {r:.2f}s, ratio {t / r:.2f} (target <= 1.00); median of {rounds}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    installed.compile_package()
    problem = daemons.missing()
    if problem:
        raise SystemExit(f"cannot run: {problem}")
    work = Path(tempfile.mkdtemp(prefix="clan-vm-bench-libvirt-"))
    ssh = daemons.SSH(work)
    daemons.host_a()
    a = daemons.ssh_to_a(ssh)
    b = daemons.host_b(ssh, work / "hostb")
    # The baseline is virsh as a user runs it: ssh connecting anew for every command.
    for host in (a, b):
        port = int(host.uri.split("@127.0.0.1:", 1)[1].split("/", 1)[0])
        host.virsh = ["virsh", "-q", "-c", ssh.uri(f"{host.name}-virsh", port, plain=True)[0]]
    settings = work / "config.yaml"
    settings.write_text(json.dumps({"hosts": {"a-ssh": a.uri, "b": b.uri}}))
    env = {**os.environ, "CLAN_VM_STATE_DIR": str(work / "state"), "CLAN_VM_CONFIG": str(settings)}
    os.environ.update(CLAN_VM_STATE_DIR=env["CLAN_VM_STATE_DIR"], CLAN_VM_CONFIG=str(settings))
    try:
        bench_list(max(args.rounds * 2, 10), env, a, b)
        bench_start(args.rounds, env, b, work / "hostb" / "lib" / "images")
    finally:
        with contextlib.suppress(Exception):  # the daemons are stopped whatever happened
            daemons.clear(a, PREFIX)
        for host in (a, b):
            daemons.stop(host)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
