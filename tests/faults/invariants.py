"""What a user must never notice after a fault, checked over one state directory.

Each check returns human-readable violations; an empty list is a pass.

1. no QEMU the tool does not track (``check_untracked_qemu``);
2. ``list --json`` exits 0 and tells the truth (``check_list``);
3. the natural next commands succeed (``scenarios.run_scenario``'s follow-ups);
4. nothing is left behind after them (``check_leftovers``);
5. no disk data lost, kept disks included (``check_disk_data``);
6. no history event lost (``check_history``);
7. a change of the definition (``set``) is applied whole or not at all
   (``scenarios.check_set_whole``).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.faults.observe import (
    MARKER_BYTE,
    MARKER_RANGE,
    has_marker,
    image_mib,
    image_problem,
    processes,
    qemu_by_vm,
    read_json,
    tap_exists,
    tap_name,
    vm_exists,
)
from tests.faults.runner import Runner

INVARIANTS = {
    1: "no untracked QEMU",
    2: "list tells the truth",
    3: "the next command proceeds",
    4: "nothing left behind",
    5: "no disk data lost",
    6: "no history event lost",
    7: "a change is applied whole or not at all",
}
ACTIVE = ("running", "paused")
STATES = ("running", "stopped", "paused", "crashed")


def check_untracked_qemu(
    state_dir: Path, listed: Mapping[str, Mapping[str, Any]] | None
) -> list[str]:
    """1. Every QEMU naming STATE_DIR is the pid its VM's state.json records as running or
    paused, is not left traced or stopped, and ``list`` does not call its VM stopped."""
    found = []
    for name, procs in sorted(qemu_by_vm(state_dir).items()):
        for proc in procs:
            if proc.tracer or proc.state.startswith(("T", "t")):
                found.append(
                    f"QEMU pid {proc.pid} of VM '{name}' is {proc.state} with TracerPid "
                    f"{proc.tracer} (left traced or stopped)"
                )
            if not vm_exists(state_dir, name):
                found.append(
                    f"QEMU pid {proc.pid} runs for VM '{name}', which does not exist "
                    f"(no vms/{name}/config.json)"
                )
                continue
            state = read_json(state_dir / "vms" / name / "state.json")
            state = state if isinstance(state, dict) else {}
            if state.get("pid") != proc.pid or state.get("status") not in ACTIVE:
                found.append(
                    f"QEMU pid {proc.pid} of VM '{name}' is not tracked: state.json says "
                    f"status={state.get('status')!r}, pid={state.get('pid')!r}"
                )
            shown = (listed or {}).get(name)
            if shown is not None and shown.get("state") not in ACTIVE:
                found.append(
                    f"`list --json` says VM '{name}' is {shown.get('state')!r} "
                    f"while its QEMU pid {proc.pid} runs"
                )
    return found


def check_list(runner: Runner) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """2. ``list --json`` exits 0, parses, and every VM in it is real: config and disk
    present, a running one has its QEMU, the disk size is the image's, the image is sound;
    and every VM on disk is listed. Returns the violations and the VMs by name."""
    state_dir = runner.state_dir
    result = runner.run("list", "--json")
    if result.code != 0:
        return [result.line()], {}
    try:
        data = json.loads(result.out)
    except ValueError as error:
        return [f"`list --json` printed no JSON ({error}): {result.out[:200]!r}"], {}
    if not isinstance(data, list):
        return [f"`list --json` printed {type(data).__name__}, not an array"], {}
    listed = {str(vm.get("name")): vm for vm in data if isinstance(vm, dict)}
    found = []
    running = qemu_by_vm(state_dir)
    for name, vm in sorted(listed.items()):
        vm_dir = state_dir / "vms" / name
        if not (vm_dir / "config.json").is_file():
            found.append(f"`list` shows VM '{name}' but vms/{name}/config.json does not exist")
        disk = vm_dir / "disk.qcow2"
        status = vm.get("state")
        if status not in STATES:
            found.append(f"`list` gives VM '{name}' the unknown state {status!r}")
        pids = [p.pid for p in running.get(name, [])]
        if status in ACTIVE and vm.get("pid") not in pids:
            found.append(
                f"`list` says VM '{name}' is {status} with pid {vm.get('pid')}, but no such "
                f"QEMU runs (QEMU pids of this VM: {pids or 'none'})"
            )
        if not disk.exists():
            found.append(f"`list` shows VM '{name}' but its disk vms/{name}/disk.qcow2 is missing")
            continue
        size = image_mib(disk)
        if size is None:
            found.append(f"the disk of VM '{name}' cannot be read by qemu-img info")
        elif vm.get("disk_size") != size:
            found.append(
                f"`list` says VM '{name}' has a {vm.get('disk_size')} MiB disk, "
                f"but the image is {size} MiB"
            )
        if status not in ACTIVE and not pids:
            problem = image_problem(disk)
            if problem:
                found.append(f"the disk of VM '{name}' is damaged: {problem}")
    on_disk = {p.parent.name for p in (state_dir / "vms").glob("*/config.json")}
    for name in sorted(on_disk - set(listed)):
        if not name.startswith("."):
            found.append(f"VM '{name}' has vms/{name}/config.json but `list` does not show it")
    return found, listed


def check_leftovers(state_dir: Path, names: Iterable[str] = ()) -> list[str]:
    """4. No half-made or half-deleted VM directory, no temp file, no write-ahead marker, no
    qemu-img, no lock file of a VM that does not exist, no tap of a VM that does not run."""
    found = []
    vms = state_dir / "vms"
    hidden = sorted(p.name for p in vms.glob(".*")) if vms.exists() else []
    if hidden:
        found.append(f"hidden leftovers in vms/: {hidden}")
    temps = sorted(str(p.relative_to(state_dir)) for p in state_dir.rglob("*.tmp"))
    if temps:
        found.append(f"temp files left: {temps}")
    # Scratch and write-ahead directories: empty once settled.
    for scratch in ("tmp", "pending"):
        entries = sorted(p.name for p in (state_dir / scratch).glob("*"))
        entries = [e for e in entries if not e.endswith(".tmp")]  # reported above
        if entries:
            found.append(f"files left in {scratch}/: {entries}")
    helpers = processes(state_dir, ("qemu-img", "qemu-io"))
    if helpers:
        found.append(
            "helper processes still running: "
            + "; ".join(f"pid {p.pid} {shlex.join(p.argv)[:120]}" for p in helpers)
        )
    locks = sorted(p.stem for p in (state_dir / "locks").glob("*.lock"))
    orphans = [n for n in locks if not vm_exists(state_dir, n)]
    if orphans:
        found.append(f"lock files of VMs that do not exist: {[f'locks/{n}.lock' for n in orphans]}")
    running = qemu_by_vm(state_dir)
    everyone = {*names, *locks, *(p.name for p in vms.glob("*") if vms.exists())}
    for name in sorted(everyone):
        taps = {tap_name(vms / name)}
        state = read_json(vms / name / "state.json")
        if isinstance(state, dict) and isinstance(state.get("tap"), str):
            taps.add(state["tap"])
        for tap in sorted(taps):
            if tap_exists(tap) and name not in running:
                found.append(f"tap {tap} of VM '{name}' exists although the VM does not run")
    return found


def check_disk_data(state_dir: Path, name: str, *, keeps_disk: bool) -> list[str]:
    """5. The marker written into the disk before the kill is still readable: in the VM's
    disk while it exists, else (a delete that keeps the disk) in kept-disks/."""
    disk = state_dir / "vms" / name / "disk.qcow2"
    kept = sorted((state_dir / "kept-disks").glob(f"{name}-*.qcow2"))
    kept_ok = [k for k in kept if has_marker(k)]
    if vm_exists(state_dir, name):
        if disk.exists():
            return [] if has_marker(disk) else [f"the disk of VM '{name}' lost its marker data"]
        if kept_ok:
            return []
        return [f"VM '{name}' exists but its disk is gone and not in kept-disks/"]
    if not keeps_disk or kept_ok:
        return []
    listing = [str(k.relative_to(state_dir)) for k in kept]
    return [
        f"VM '{name}' was deleted without --force but its disk (marker {MARKER_BYTE} at "
        f"{MARKER_RANGE}) is neither in vms/{name}/ nor in kept-disks/ (kept-disks has "
        f"{listing or 'nothing'})"
    ]


def history_events(runner: Runner, name: str) -> tuple[list[dict[str, Any]], str | None]:
    """The VM's events (newest first), or the reason ``history`` failed."""
    result = runner.run("history", "--vm", name, "--json")
    unknown = f"error: no VM named '{name}'"
    if (
        result.code == 2
        and result.err.startswith(unknown)
        and not vm_exists(runner.state_dir, name)
    ):
        return [], None  # no such VM and no events of one: the history has none
    if result.code != 0:
        return [], result.line()
    try:
        data = json.loads(result.out)
    except ValueError as error:
        return [], f"`history --json` printed no JSON ({error})"
    if not isinstance(data, list):
        return [], "`history --json` printed no array"
    return [e for e in data if isinstance(e, dict)], None


def check_history(
    runner: Runner, name: str, before: int, expected: Sequence[tuple[str, str]]
) -> list[str]:
    """6. ``history --json`` exits 0 and parses, and each (ACTION, WHY) in EXPECTED, an
    operation that took effect, has an ACTION event among the events after the first BEFORE."""
    found = []
    whole = runner.run("history", "--json")
    if whole.code != 0:
        found.append(whole.line())
    else:
        try:
            json.loads(whole.out)
        except ValueError as error:
            found.append(f"`history --json` printed no JSON ({error})")
    events, problem = history_events(runner, name)
    if problem:
        return [*found, problem]
    new = events[: max(0, len(events) - before)]
    actions = [str(e.get("action")) for e in new]
    for action, why in expected:
        if action not in actions:
            found.append(
                f"{why}, but history has no '{action}' event for it "
                f"(events since the kill: {actions or 'none'})"
            )
    return found
