"""``boot-test``: build and boot declared VMs, wait for their ready text, run their checks in
the guest (through the guest agent), power them off.

Meant for CI: every failure is a row in the result table (and a JUnit failure),
never an abort of the whole run; the caller exits non-zero if any VM failed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from clan_vm_tasks.backends.agent_wire import printable
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.nix.declared import declared as declared_vms
from clan_vm_tasks.nix.flakes import Flake
from clan_vm_tasks.nix.prepare import prepare
from clan_vm_tasks.nix.request import Request
from clan_vm_tasks.state import files
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import guest, machines, reconcile
from clan_vm_tasks.vm.agent import session
from clan_vm_tasks.vm.start import start
from clan_vm_tasks.vm.stop import stop

POWER_OFF_TIMEOUT = 15.0
TAIL = 10  # lines of a failed check's output in the report
TAIL_BYTES = 16 << 10  # of each stream, for those lines
LINE = 300  # characters of one line
# Console output carries control characters that XML 1.0 cannot hold.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("", text)


@dataclass(frozen=True)
class Check:
    command: str  # run by the guest's /bin/sh
    exit_code: int | None  # None: it could not be run
    output: str  # the tail of what it printed, or why it could not run
    seconds: float = 0.0  # how long it ran

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class Result:
    name: str
    passed: bool
    seconds: float | None  # until the ready text appeared
    message: str  # one line
    console: str = ""  # last console lines, or the rest of a build's error, for the report
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class Plan:
    name: str
    expect: str
    timeout: float
    checks: tuple[str, ...] = ()


def _plan(
    request: Request,
    flake: Flake,
    expect: str | None,
    timeout: float | None,
    checks: tuple[str, ...],
) -> Plan | Result:
    """Build and create (or update) one VM; a problem becomes that VM's failed result."""
    name = request.name
    try:
        if reconcile.current(request.store, name).status in reconcile.ACTIVE:
            return Result(name, False, None, "already running; stop it before a boot test")
        config = prepare(request, flake)
    except ClanVMError as error:  # a failed build: its builder's last lines follow
        message, _, rest = str(error).partition("\n")
        return Result(name, False, None, message, rest)
    text = expect or config.boot_test.expect
    if not text:
        return Result(name, False, None, "no bootTest.expect declared and no --expect given")
    every = (*config.boot_test.checks, *checks)
    return Plan(name, text, timeout or float(config.boot_test.timeout), every)


def _boot(store: Store, settings: Settings, plan: Plan) -> Result:
    """Boot PLAN's VM and check it; whatever happens, nothing it started is left running."""
    try:
        return _boot_and_check(store, settings, plan)
    except (ClanVMError, OSError) as error:  # one VM's failure, not the run's
        return Result(plan.name, False, None, str(error))
    finally:
        _power_off(store, plan.name)


def _boot_and_check(store: Store, settings: Settings, plan: Plan) -> Result:
    offset = 0
    try:
        offset = store.read_state(plan.name).console_offset
        started = start(
            store, settings, plan.name, wait_for=plan.expect, timeout=plan.timeout, notify=_quiet
        )
    except ClanVMError as error:
        state = store.read_state(plan.name)
        tail = machines.machine(store, plan.name, state).console_tail(
            state.console_offset or offset
        )
        _power_off(store, plan.name)
        return Result(plan.name, False, None, str(error), "\n".join(tail))
    checked = _run_checks(store, plan, started.seconds)
    failed = [c for c in checked if not c.passed]
    try:
        stopped = stop(store, plan.name, timeout=POWER_OFF_TIMEOUT, notify=_quiet)
    except ClanVMError as error:
        return Result(plan.name, False, started.seconds, f"booted but did not stop: {error}")
    if failed:
        first = failed[0]
        code = "could not run" if first.exit_code is None else f"exited {first.exit_code}"
        last = first.output.splitlines()[-1] if first.output else "no output"
        message = f"check {first.command!r} {code}: {last}"
        return Result(plan.name, False, started.seconds, message, first.output, checked)
    ran = f", {len(checked)} check{'s' if len(checked) != 1 else ''} passed" if checked else ""
    return Result(
        plan.name, True, started.seconds, f"{plan.expect!r} seen{ran}; {stopped.words}", "", checked
    )


def _run_checks(store: Store, plan: Plan, booted: float) -> tuple[Check, ...]:
    """Each check in the guest through its agent, within what is left of the time limit."""
    if not plan.checks:
        return ()
    deadline = time.monotonic() + max(plan.timeout - booted, 10.0)
    results = []
    for command in plan.checks:
        began = time.monotonic()
        remaining = max(deadline - began, 1.0)
        try:
            with session(store, plan.name, wait=remaining) as agent:
                ran = guest.run(agent, ["/bin/sh", "-c", command], remaining)
        except ClanVMError as error:
            results.append(Check(command, None, str(error), time.monotonic() - began))
            continue
        results.append(
            Check(command, ran.exit_code, _tail(ran.stdout, ran.stderr), time.monotonic() - began)
        )
    return tuple(results)


def _tail(*streams: bytes) -> str:
    """The last TAIL lines of what a check printed, each cut to LINE characters: the report
    and the JUnit file stay small whatever the guest printed."""
    text = b"".join(s[-TAIL_BYTES:] for s in streams).decode(errors="replace").strip()
    return "\n".join(printable(line, LINE) for line in text.splitlines()[-TAIL:])


def _quiet(message: str) -> None:
    del message


def _power_off(store: Store, name: str) -> None:
    try:
        if reconcile.current(store, name).status in reconcile.ACTIVE:
            stop(store, name, force=True, notify=_quiet)
    except ClanVMError:
        pass


def run(
    request: Request,
    flake: Flake,
    names: list[str],
    *,
    expect: str | None = None,
    timeout: float | None = None,
    checks: tuple[str, ...] = (),
) -> list[Result]:
    """Boot the VMs NAMES (default: every declared one) with what REQUEST allows them."""
    store, settings = request.store, request.settings
    declared = declared_vms(store, flake)
    chosen = names or sorted(declared)
    prepared = [
        _plan(dataclasses.replace(request, name=n), flake, expect, timeout, checks) for n in chosen
    ]
    plans = [p for p in prepared if isinstance(p, Plan)]
    workers = max(1, min(len(plans), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        booted = {r.name: r for r in pool.map(lambda p: _boot(store, settings, p), plans)}
    return [booted[p.name] if isinstance(p, Plan) else p for p in prepared]


def junit(results: list[Result], path: Path, suite: str) -> None:
    """One testcase per VM (it booted, in the seconds until its ready text) and one per check
    run in it (in the seconds it ran)."""
    cases = [(r.name, r.seconds, r.passed or bool(r.checks), r.message, r.console) for r in results]
    cases += [
        (f"{r.name}: {c.command}", c.seconds, c.passed, f"exit code {c.exit_code}", c.output)
        for r in results
        for c in r.checks
    ]
    total = sum(seconds or 0.0 for _, seconds, _, _, _ in cases)
    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(cases)),
        failures=str(sum(not passed for _, _, passed, _, _ in cases)),
        errors="0",
        time=f"{total:.3f}",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    for name, seconds, passed, message, detail in cases:
        case = ET.SubElement(
            root, "testcase", classname=suite, name=name, time=f"{seconds or 0:.3f}"
        )
        if passed:
            ET.SubElement(case, "system-out").text = _xml_text(message)
        else:
            failure = ET.SubElement(case, "failure", message=_xml_text(message))
            failure.text = _xml_text(detail or message)
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(path, data + b"\n", mode=0o644)
