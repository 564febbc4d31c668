"""The VM operations, composed from the store, the QEMU driver and the history.

Every function here is the Python API behind one task; they raise ClanVMError
subclasses and print nothing but notices (through ``notify``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clan_vm_tasks import disks, fsutil, history, hostnet, overview, reconcile
from clan_vm_tasks.errors import ClanVMError, InvalidInput, StateConflict
from clan_vm_tasks.models import VMConfig, validate
from clan_vm_tasks.network import mac_for
from clan_vm_tasks.qemu import accel as accel_probe
from clan_vm_tasks.qemu import console, process
from clan_vm_tasks.qemu.argv import LaunchPlan, build_argv
from clan_vm_tasks.qemu.qmp import Monitor, QMPUnavailable
from clan_vm_tasks.settings import Settings
from clan_vm_tasks.store import Store, VMPaths, VMState

Notify = Callable[[str], None]
DEFAULT_STOP_TIMEOUT = 30.0
HARD_STEP_WAIT = 5.0
QMP_START_TIMEOUT = 30.0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def open_store(settings: Settings) -> Store:
    return Store(settings.state_dir).ensure()


def load_config(store: Store, name: str) -> VMConfig:
    return validate(VMConfig, store.read_config(name), f"definition of VM '{name}'")


# --- create -----------------------------------------------------------------------------------


def _check_files(config: VMConfig) -> VMConfig:
    """Existence checks that the schema cannot do; paths become absolute."""
    updates: dict[str, Any] = {}
    for field in ("kernel", "initrd"):
        path: Path | None = getattr(config, field)
        if path is not None:
            if not path.is_file():
                raise InvalidInput(f"{field} {path} does not exist or is not a file")
            updates[field] = path.absolute()
    if config.initrd and not config.kernel:
        raise InvalidInput("--initrd needs --kernel (direct kernel boot)")
    if config.base_image is not None:
        if not config.base_image.is_file():
            raise InvalidInput(f"base image {config.base_image} does not exist or is not a file")
        updates["base_image"] = config.base_image.absolute()
        base_mib = disks.size_mib_ceil(config.base_image)
        if config.disk_size < base_mib:
            raise InvalidInput(
                f"--disk {config.disk_size} MiB is smaller than the base image ({base_mib} MiB)"
            )
    if config.network.mode == "bridge" and config.network.bridge is None:
        updates["network"] = config.network.model_copy(update={"bridge": "clan-br0"})
    return config.model_copy(update=updates)


def create(store: Store, config: VMConfig) -> VMConfig:
    """Register a new VM with a fresh qcow2 disk; an existing name is refused untouched."""
    config = _check_files(config)
    explicit_mac = config.network.mac is not None
    if config.network.mac is None:
        network = config.network.model_copy(update={"mac": mac_for(config.name)})
        config = config.model_copy(update={"network": network})
    name = config.name
    paths = store.paths(name)
    # The MAC check and the rename that registers the VM happen under one store-wide lock.
    with store.lock(name), fsutil.locked(store.root / "network.lock", "MAC registry", 120):
        if store.exists(name):
            raise StateConflict(f"VM '{name}' already exists")
        hostnet.check_mac(config.network, name, _macs(store), explicit_mac)
        store.sweep_leftovers(name)
        # Built in a hidden directory and renamed into place: a crash leaves no half VM.
        staging = fsutil.private_dir(store.staging_dir(name, "creating"))
        try:
            if config.base_image is not None:
                disks.create_overlay(staging / paths.disk.name, config.base_image, config.disk_size)
            else:
                disks.create(staging / paths.disk.name, config.disk_size)
            fsutil.atomic_write(
                staging / paths.config.name, config.model_dump_json(indent=2).encode()
            )
            state = VMState(created_at=history.now())
            fsutil.atomic_write(staging / paths.state.name, state.to_json())
            os.rename(staging, paths.dir)
            fsutil.fsync_dir(store.vms)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    history.record(
        store.history,
        name,
        "create",
        f"{config.cpus} cpus, {config.memory} MiB, {config.disk_size} MiB disk",
    )
    return config


def _macs(store: Store) -> dict[str, str]:
    """Every registered VM's MAC address (name -> mac)."""
    macs = {}
    for other in store.names():
        try:
            network = store.read_config(other).get("network")
        except ClanVMError:
            continue
        if isinstance(network, dict) and isinstance(network.get("mac"), str):
            macs[other] = network["mac"]
    return macs


def reconfigure(store: Store, name: str, config: VMConfig) -> list[str]:
    """Apply a changed definition to an existing VM; returns the names of changed fields.

    The new settings take effect at the next start. Growing the disk needs the VM
    stopped; shrinking is always refused.
    """
    config = _check_files(config)
    if config.network.mac is None:
        network = config.network.model_copy(update={"mac": mac_for(config.name)})
        config = config.model_copy(update={"network": network})
    with store.lock(name):
        paths = store.require(name)
        old = load_config(store, name)
        changed = [f for f in VMConfig.model_fields if getattr(old, f) != getattr(config, f)]
        if not changed:
            return []
        if "base_image" in changed:
            raise StateConflict(
                f"the base image of VM '{name}' changed; an existing disk cannot be moved to "
                f"another base: delete the VM (clan-vm-manager delete {name}) and start it again"
            )
        if "disk_size" in changed:
            if reconcile.current(store, name, locked=True).status in reconcile.ACTIVE:
                raise StateConflict(f"VM '{name}' is running; stop it to resize its disk")
            disks.resize(paths.disk, config.disk_size)
        fsutil.atomic_write(paths.config, config.model_dump_json(indent=2).encode())
    history.record(store.history, name, "reconfigure", "changed " + ", ".join(changed))
    return changed


# --- start ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    name: str
    pid: int
    accel: str
    seconds: float  # until QMP answered, or until the awaited text appeared


def _plan(
    config: VMConfig, paths: VMPaths, accel: str, daemonize: bool, tap: str | None = None
) -> LaunchPlan:
    return LaunchPlan(
        tap=tap,
        config=config,
        accel=accel,
        mac=config.network.mac or mac_for(config.name),
        disk=paths.disk,
        qmp_socket=paths.qmp_socket,
        serial_socket=paths.serial_socket,
        console_log=paths.console_log,
        pidfile=paths.pidfile,
        daemonize=daemonize,
    )


def _prepare_runtime(paths: VMPaths) -> None:
    fsutil.private_dir(paths.run.parent)
    fsutil.private_dir(paths.run)
    for sock in (paths.qmp_socket, paths.serial_socket):
        sock.unlink(missing_ok=True)


def _hard_stop(proc: process.ProcessId, pidfile: Path) -> str:
    for step, sig in (("sigterm", signal.SIGTERM), ("sigkill", signal.SIGKILL)):
        process.send_signal(proc, pidfile, sig)
        if process.wait_gone(proc, pidfile, HARD_STEP_WAIT):
            return step
    raise ClanVMError(f"QEMU (pid {proc.pid}) survived SIGKILL")


def _launch(
    store: Store, name: str, settings: Settings, accel: str | None, foreground: bool, notify: Notify
) -> tuple[process.ProcessId, VMState, subprocess.Popen[bytes] | None]:
    """Launch QEMU for a stopped VM, wait until QMP answers, record it running.

    The caller holds the lock. On failure nothing is left running and the VM stays stopped.
    """
    paths = store.require(name)
    state = reconcile.current(store, name, locked=True)
    if state.status in reconcile.ACTIVE:
        raise StateConflict(f"VM '{name}' is already running (pid {state.pid})")
    config = load_config(store, name)
    for field in ("kernel", "initrd"):
        path = getattr(config, field)
        if path is not None and not path.is_file():
            raise ClanVMError(f"{field} {path} of VM '{name}' no longer exists")
    requested = accel or (config.accel if config.accel != "auto" else settings.accel)
    choice = accel_probe.choose(requested)
    if choice.notice:
        notify(choice.notice)
    _prepare_runtime(paths)
    offset = paths.console_log.stat().st_size if paths.console_log.exists() else 0
    child = None
    try:
        with hostnet.prepare(config, paths.dir) as net:
            argv = build_argv(_plan(net.config, paths, choice.accel, not foreground, net.tap))
            if foreground:
                child = process.launch_foreground(argv, paths.qemu_log)
                proc = process.wait_for_pidfile(paths.pidfile, child, timeout=60)
            else:
                proc = process.launch_daemon(argv, paths.pidfile, paths.qemu_log)
            # Inside the network block: "auto" ports stay reserved until QEMU listens.
            try:
                _await_qmp(paths, proc, QMP_START_TIMEOUT)
            except QMPUnavailable as error:
                _hard_stop(proc, paths.pidfile)
                paths.pidfile.unlink(missing_ok=True)
                raise ClanVMError(f"QEMU started but QMP never answered: {error}") from None
    except ClanVMError as error:
        _record_failed_start(store, name, str(error))
        raise
    state = dataclasses.replace(
        state,
        status="running",
        pid=proc.pid,
        pid_start=proc.start,
        accel=choice.accel,
        started_at=history.now(),
        stopped_at=None,
        stop_step=None,
        console_offset=offset,
        tap=net.tap,
        forwards=net.forwards,
    )
    store.write_state(name, state)
    return proc, state, child


def _await_qmp(paths: VMPaths, proc: process.ProcessId, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with Monitor(paths.qmp_socket, timeout=max(1.0, deadline - time.monotonic())) as mon:
                mon.execute("query-status")
            return
        except QMPUnavailable:
            if time.monotonic() >= deadline or not process.is_ours(proc, paths.pidfile):
                raise
            time.sleep(0.05)


def _record_failed_start(store: Store, name: str, message: str) -> None:
    history.record(store.history, name, "start", message, "failed")


def start(
    store: Store,
    settings: Settings,
    name: str,
    *,
    wait_for: str | None = None,
    timeout: float = 60.0,
    accel: str | None = None,
    foreground: bool = False,
    notify: Notify = _stderr,
    action: str = "start",
) -> Started:
    """Boot a VM and return once QMP answers (and WAIT_FOR appeared on the console)."""
    if timeout <= 0:
        raise InvalidInput("--timeout must be positive")
    began = time.monotonic()
    paths = store.require(name)  # before locking: an unknown name leaves no lock file
    with store.lock(name):
        proc, state, child = _launch(store, name, settings, accel, foreground, notify)
    if wait_for is not None:

        def alive() -> bool:
            return process.is_ours(proc, paths.pidfile)

        if not console.wait_for_text(
            paths.console_log,
            wait_for,
            state.console_offset,
            timeout - (time.monotonic() - began),
            alive,
        ):
            tail = console.last_lines(paths.console_log, state.console_offset)
            why = "QEMU exited" if not alive() else f"not within {timeout:g}s"
            message = f"{wait_for!r} did not appear on the console of '{name}' ({why})"
            if alive():
                message += f"; the VM is still running (clan-vm-manager stop {name})"
            notify(
                "last console lines:\n" + ("\n".join(f"  | {line}" for line in tail) or "  (none)")
            )
            _record_failed_start(store, name, message)
            raise ClanVMError(message)
    seconds = time.monotonic() - began
    details = f"pid {proc.pid}, {state.accel}" + (
        f", {wait_for!r} after {seconds:.1f}s" if wait_for else ""
    )
    history.record(store.history, name, action, details)
    if child is not None:
        _follow_foreground(store, name, child, notify)
    return Started(name, proc.pid, state.accel or "", seconds)


def _follow_foreground(
    store: Store, name: str, child: subprocess.Popen[bytes], notify: Notify
) -> None:
    """Stream the console until QEMU exits; Ctrl-C or SIGTERM stops the VM gracefully."""
    paths = store.paths(name)
    offset = store.read_state(name).console_offset

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        while child.poll() is None:
            try:
                chunk = console.read_from(paths.console_log, offset)
                if chunk:
                    offset += len(chunk)
                    os.write(sys.stdout.fileno(), chunk)
                time.sleep(0.05)
            except KeyboardInterrupt:
                notify(f"stopping '{name}'...")
                stop(store, name)
                break
        child.wait()
        os.write(sys.stdout.fileno(), console.read_from(paths.console_log, offset))
    finally:
        signal.signal(signal.SIGTERM, previous)
    reconcile.current(store, name)


# --- stop -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stopped:
    name: str
    step: str  # "acpi", "qmp-quit", "sigterm" or "sigkill"
    seconds: float


STEP_WORDS = {
    "acpi": "the guest shut down after the ACPI power button",
    "qmp-quit": "QEMU quit on request over QMP",
    "sigterm": "QEMU ended on SIGTERM",
    "sigkill": "QEMU was killed with SIGKILL",
}


def _shutdown(
    paths: VMPaths,
    proc: process.ProcessId,
    *,
    paused: bool,
    force: bool,
    timeout: float,
    notify: Notify,
) -> str:
    """The stop ladder: ACPI power button, QMP quit, SIGTERM, SIGKILL."""
    if not force:
        if paused:
            notify("the VM is paused and cannot see the power button; asking QEMU to quit")
        else:
            try:
                with Monitor(paths.qmp_socket) as mon:
                    mon.execute("system_powerdown")
                if process.wait_gone(proc, paths.pidfile, timeout):
                    return "acpi"
                notify(f"the guest did not power off within {timeout:g}s; asking QEMU to quit")
            except ClanVMError as error:
                notify(f"power button not delivered ({error}); asking QEMU to quit")
        try:
            with Monitor(paths.qmp_socket, timeout=HARD_STEP_WAIT) as mon:
                mon.execute("quit")
        except ClanVMError:
            pass  # QEMU often closes the socket before answering "quit"
        if process.wait_gone(proc, paths.pidfile, HARD_STEP_WAIT):
            return "qmp-quit"
    return _hard_stop(proc, paths.pidfile)


def _halt(
    store: Store, name: str, state: VMState, *, force: bool, timeout: float, notify: Notify
) -> str:
    """Stop a running VM and record it stopped; the caller holds the lock."""
    paths = store.paths(name)
    proc = reconcile.process_of(state)
    assert proc is not None
    step = _shutdown(
        paths, proc, paused=state.status == "paused", force=force, timeout=timeout, notify=notify
    )
    paths.pidfile.unlink(missing_ok=True)  # gone after SIGKILL too: not a crash
    for sock in (paths.qmp_socket, paths.serial_socket):
        sock.unlink(missing_ok=True)
    if state.tap:
        hostnet.delete_tap(state.tap)
    store.write_state(
        name,
        dataclasses.replace(
            state,
            status="stopped",
            pid=None,
            pid_start=None,
            tap=None,
            forwards=[],
            stopped_at=history.now(),
            stop_step=step,
        ),
    )
    return step


def _require_active(store: Store, name: str) -> VMState:
    store.require(name)
    state = reconcile.current(store, name, locked=True)
    if state.status not in reconcile.ACTIVE:
        raise StateConflict(f"VM '{name}' is not running (it is {state.status})")
    return state


def stop(
    store: Store,
    name: str,
    *,
    force: bool = False,
    timeout: float = DEFAULT_STOP_TIMEOUT,
    notify: Notify = _stderr,
) -> Stopped:
    if timeout <= 0:
        raise InvalidInput("--timeout must be positive")
    began = time.monotonic()
    store.require(name)
    with store.lock(name):
        state = _require_active(store, name)
        step = _halt(store, name, state, force=force, timeout=timeout, notify=notify)
    seconds = time.monotonic() - began
    history.record(store.history, name, "stop", f"{step}: {STEP_WORDS[step]} ({seconds:.1f}s)")
    return Stopped(name, step, seconds)


def restart(
    store: Store,
    settings: Settings,
    name: str,
    *,
    timeout: float = DEFAULT_STOP_TIMEOUT,
    wait_for: str | None = None,
    notify: Notify = _stderr,
) -> Started:
    """Stop (gracefully) if running, then start: one "restart" event in the history."""
    store.require(name)
    with store.lock(name):
        store.require(name)
        state = reconcile.current(store, name, locked=True)
        if state.status in reconcile.ACTIVE:
            _halt(store, name, state, force=False, timeout=timeout, notify=notify)
    return start(
        store,
        settings,
        name,
        wait_for=wait_for,
        notify=notify,
        action="restart",
        timeout=max(timeout, 60.0),
    )


# --- delete -----------------------------------------------------------------------------------


def delete(
    store: Store, name: str, *, force: bool = False, notify: Notify = _stderr
) -> Path | None:
    """Remove a VM. Without FORCE a running VM is refused and the disk is kept (path returned)."""
    store.require(name)
    with store.lock(name):
        paths = store.require(name)
        state = reconcile.current(store, name, locked=True)
        if state.status in reconcile.ACTIVE:
            if not force:
                raise StateConflict(f"VM '{name}' is running; stop it first or use --force")
            _halt(store, name, state, force=True, timeout=0, notify=notify)
        elif state.tap:  # left behind by a crash
            hostnet.delete_tap(state.tap)
        kept = None
        if not force and paths.disk.exists():
            kept_dir = fsutil.private_dir(store.root / "kept-disks")
            stamp = time.strftime("%Y%m%dT%H%M%S")
            kept = kept_dir / f"{name}-{stamp}.qcow2"
            os.rename(paths.disk, kept)
        doomed = store.staging_dir(name, "deleting")
        os.rename(paths.dir, doomed)  # atomic: the VM is gone, what remains is garbage
        fsutil.fsync_dir(store.vms)
        shutil.rmtree(doomed, ignore_errors=True)
        shutil.rmtree(paths.run, ignore_errors=True)
    details = f"disk kept at {kept}" if kept else "disk removed"
    history.record(store.history, name, "delete", details)
    return kept


# --- inspection -------------------------------------------------------------------------------


def status(store: Store, name: str) -> dict[str, Any]:
    """list's object for one VM, checked against QMP when QEMU is alive."""
    store.require(name)
    state = reconcile.current(store, name)
    info = overview.view(name, state, store.read_config(name))
    info["qmp"] = None
    if state.status in reconcile.ACTIVE:
        try:
            answer = Monitor(store.paths(name).qmp_socket, timeout=2.0)
            with answer as mon:
                run_state = mon.execute("query-status")
            info["qmp"] = True
            info["state"] = "paused" if run_state.get("status") == "paused" else "running"
        except ClanVMError:
            info["qmp"] = False  # alive but not answering (hung, or another client attached)
    return info


def show(store: Store, settings: Settings, name: str) -> dict[str, Any]:
    """Everything about one VM: status, configuration, paths, accelerator, disk."""
    info = status(store, name)
    config = load_config(store, name)
    paths = store.paths(name)
    state = store.read_state(name)
    if state.status in reconcile.ACTIVE and state.accel:
        info["accel"] = state.accel
    else:
        requested = config.accel if config.accel != "auto" else settings.accel
        info["accel"] = accel_probe.choose(requested).accel
    disk = disks.info(paths.disk) if paths.disk.exists() else {}
    info.update(
        config=json.loads(config.model_dump_json()),
        console_log=str(paths.console_log),
        directory=str(paths.dir),
        qmp_socket=str(paths.qmp_socket),
        serial_socket=str(paths.serial_socket),
        mac=config.network.mac,
        created_at=state.created_at,
        disks=[
            {
                "path": str(paths.disk),
                "format": disk.get("format"),
                "virtual_size": disk.get("virtual-size"),
                "actual_size": disk.get("actual-size"),
                "backing_file": disk.get("full-backing-filename", disk.get("backing-filename")),
                "backing_format": disk.get("backing-filename-format"),
            }
        ],
    )
    return info


def console_log(store: Store, name: str) -> bytes:
    paths = store.require(name)
    return console.read_from(paths.console_log, 0)


def attach_console(store: Store, name: str) -> str:
    store.require(name)
    with store.lock(name, timeout=5):
        _require_active(store, name)
    # QEMU serves one console client at a time and would leave a second one hanging.
    held = fsutil.try_lock(store.root / "locks" / f"{name}.console")
    if held is None:
        raise StateConflict(f"the console of VM '{name}' is already attached elsewhere")
    try:
        return console.attach(store.paths(name).serial_socket)
    finally:
        os.close(held)
