"""Nix evaluation cost of `list --flake` and `start`, cold (empty cache) and warm.

    CLAN_VM_TEST_GUEST=... .venv/bin/python bench/nix_eval.py [--rounds N]

Uses the offline test flake (tests/nix). Counts nix invocations through
CLAN_VM_NIX_LOG; warm runs must make none.
"""

from __future__ import annotations

import argparse
import json
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

from tests.conftest import Guest  # noqa: E402
from tests.nix_fixtures import make_flake  # noqa: E402

CLI = str(Path(sys.executable).parent / "clan-vm-manager")


def measure(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, int]:
    log.unlink(missing_ok=True)
    began = time.perf_counter()
    subprocess.run([CLI, *argv], env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - began
    calls = len(log.read_text().splitlines()) if log.exists() else 0
    return seconds, calls


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    guest_dir = Path(os.environ.get("CLAN_VM_TEST_GUEST", ROOT / ".cache" / "guest"))
    guest = Guest(guest_dir / "vmlinuz", guest_dir / "initrd")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        flake = str(make_flake(work / "flake", guest))
        log = work / "nix.log"
        env = {**os.environ, "CLAN_VM_NIX_OFFLINE": "1", "CLAN_VM_NIX_LOG": str(log)}
        env["CLAN_VM_CONFIG"] = "/nonexistent"
        rows = []
        for label, argv in (
            ("list --flake", ["list", "--flake", flake]),
            ("create --flake (start without QEMU)", ["create", "alpha", "--flake", flake]),
        ):
            cold, warm, cold_calls, warm_calls = [], [], [], []
            for _ in range(args.rounds):
                state = work / "state"
                shutil.rmtree(state, ignore_errors=True)
                env["CLAN_VM_STATE_DIR"] = str(state)
                seconds, calls = measure(argv, env, log)
                cold.append(seconds)
                cold_calls.append(calls)
                seconds, calls = measure(argv, env, log)
                warm.append(seconds)
                warm_calls.append(calls)
            rows.append(
                {
                    "command": label,
                    "cold_seconds": round(statistics.median(cold), 3),
                    "cold_nix_calls": max(cold_calls),
                    "warm_seconds": round(statistics.median(warm), 3),
                    "warm_nix_calls": max(warm_calls),
                }
            )
    print(json.dumps(rows, indent=2))
    return 0 if all(r["warm_nix_calls"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
