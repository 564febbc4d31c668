"""What is really there, seen from the host rather than through the tool: processes in
``/proc``, disk images through ``qemu-img``/``qemu-io``, taps in ``/sys``, console logs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.faults.runner import HarnessError

MARKER_BYTE = "0xab"
MARKER_RANGE = "0 64k"


# --- processes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    argv: tuple[str, ...]
    state: str  # the State line of /proc/PID/status, e.g. "S (sleeping)"
    tracer: int  # TracerPid


def processes(state_dir: Path, prefixes: tuple[str, ...]) -> list[Proc]:
    """Live processes whose program starts with one of PREFIXES and that name STATE_DIR."""
    needle = str(state_dir) + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            argv = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
            if not argv or not Path(argv[0]).name.startswith(prefixes):
                continue
            if not any(needle in a for a in argv):
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        state = fields.get("State", "?").strip()
        if state.startswith(("Z", "X")):
            continue  # a zombie is no longer running anything
        tracer = int(fields.get("TracerPid", "0").strip() or 0)
        found.append(Proc(int(entry), argv, state, tracer))
    return found


def qemu_by_vm(state_dir: Path) -> dict[str, list[Proc]]:
    """Running QEMU processes of STATE_DIR, by the VM directory their command line names."""
    pattern = re.compile(re.escape(str(state_dir)) + r"/vms/([^/,]+)/")
    found: dict[str, list[Proc]] = {}
    for proc in processes(state_dir, ("qemu-system",)):
        names = {m.group(1) for a in proc.argv for m in pattern.finditer(a)}
        for name in names or {"?"}:
            found.setdefault(name, []).append(proc)
    return found


# --- files ------------------------------------------------------------------------------------


def vm_exists(state_dir: Path, name: str) -> bool:
    return (state_dir / "vms" / name / "config.json").is_file()


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def console_size(state_dir: Path, name: str) -> int:
    path = state_dir / "vms" / name / "console.log"
    return path.stat().st_size if path.exists() else 0


def wait_console(state_dir: Path, name: str, text: str, after: int, timeout: float) -> bool:
    path = state_dir / "vms" / name / "console.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), path.open("rb") as f:
            f.seek(after)
            if text.encode() in f.read():
                return True
        time.sleep(0.1)
    return False


# --- disk images ------------------------------------------------------------------------------


def _tool(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )


def image_info(path: Path) -> dict[str, Any] | None:
    result = _tool("qemu-img", "info", "-U", "--output=json", str(path))
    if result.returncode != 0:
        return None
    data = json.loads(result.stdout)
    return data if isinstance(data, dict) else None


def image_mib(path: Path) -> int | None:
    info = image_info(path)
    return None if info is None else -(-int(info["virtual-size"]) // (1 << 20))


def image_snapshots(path: Path) -> list[str]:
    info = image_info(path) or {}
    return [str(s.get("name")) for s in info.get("snapshots", []) if isinstance(s, dict)]


def image_problem(path: Path) -> str | None:
    """What ``qemu-img check`` says is wrong (corruption or an unreadable image), or None.
    Leaked clusters (exit 3) are harmless and not reported."""
    result = _tool("qemu-img", "check", "-U", str(path))
    if result.returncode in (0, 3):
        return None
    lines = [x for x in (result.stdout + result.stderr).strip().splitlines() if x]
    return f"qemu-img check exited {result.returncode}: {' | '.join(lines[-3:])}"


def write_marker(path: Path) -> None:
    command = f"write -P {MARKER_BYTE} {MARKER_RANGE}"
    result = _tool("qemu-io", "-f", "qcow2", "-c", command, str(path))
    if result.returncode != 0 or "wrote" not in result.stdout:
        raise HarnessError(f"qemu-io could not write the marker into {path}: {result.stderr}")


def has_marker(path: Path) -> bool:
    command = f"read -P {MARKER_BYTE} {MARKER_RANGE}"
    result = _tool("qemu-io", "-r", "-U", "-f", "qcow2", "-c", command, str(path))
    text = result.stdout + result.stderr
    return result.returncode == 0 and "read 65536/65536" in text and "failed" not in text


# --- network and cleanup ----------------------------------------------------------------------


def tap_name(vm_dir: Path) -> str:
    """The tap the tool makes for a bridged VM (same formula as backends/qemu/host_network)."""
    return "cvm" + hashlib.sha256(str(vm_dir).encode()).hexdigest()[:12]


def tap_exists(tap: str) -> bool:
    return Path(f"/sys/class/net/{tap}").exists()


def cleanup(state_dir: Path) -> None:
    """Kill whatever still runs for STATE_DIR (QEMU, qemu-img) and remove its taps.

    Found through /proc, not pidfiles: an untracked QEMU may have lost its pidfile.
    """
    helpers = ("qemu-system", "qemu-img", "qemu-io")
    for proc in processes(state_dir, helpers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while processes(state_dir, helpers) and time.monotonic() < deadline:
        time.sleep(0.05)
    names = {p.name for p in (state_dir / "vms").glob("*")}
    names |= {p.stem for p in (state_dir / "locks").glob("*.lock")}
    for name in names:
        tap = tap_name(state_dir / "vms" / name)
        if tap_exists(tap):
            _tool("ip", "link", "delete", tap)
