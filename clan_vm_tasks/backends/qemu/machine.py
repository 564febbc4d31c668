"""One VM as a local, daemonized QEMU process: the ``Machine`` of the QEMU backend.

The process is identified by the pid and start time recorded at launch (see
``process``); control goes over QMP, the console is a unix socket whose output
QEMU also appends to ``console.log``. Only ``process`` is imported up front:
``list`` asks ``alive`` of every running VM and must stay cheap.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from clan_vm_tasks.backends.base import AccelChoice, Launched, Snapshot, SnapshotCommand, StopStep
from clan_vm_tasks.backends.qemu import process
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.render import Notify

if TYPE_CHECKING:
    from clan_vm_tasks.backends.qemu.qmp import Monitor
    from clan_vm_tasks.models import VMConfig
    from clan_vm_tasks.state.store import VMPaths, VMState

QMP_START_TIMEOUT = 30.0
HARD_STEP_WAIT = 5.0
# Saving memory state blocks QMP while it runs; give it time on a slow TCG host.
JOB_TIMEOUT = 300.0
DRIVE_ID = "disk0"  # the -drive id in argv.py
PIDFILE_TIMEOUT = 60.0

STOP_STEPS: tuple[StopStep, ...] = (
    StopStep(
        "acpi",
        "guest",
        "the guest shut down after the ACPI power button",
        "pressing the ACPI power button",
    ),
    StopStep("qmp-quit", "hypervisor", "QEMU quit on request over QMP", "asking QEMU to quit"),
    StopStep("sigterm", "force", "QEMU ended on SIGTERM", "sending SIGTERM"),
    StopStep("sigkill", "force", "QEMU was killed with SIGKILL", "sending SIGKILL"),
)
_SIGNALS = {"sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}


def _parse_snapshot(entry: dict[str, Any]) -> Snapshot:
    seconds = int(entry.get("date-sec", 0)) + int(entry.get("date-nsec", 0)) / 1e9
    return Snapshot(
        name=str(entry.get("name", "")),
        date=datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds"),
        vm_state_size=int(entry.get("vm-state-size", 0)),
        vm_clock=int(entry.get("vm-clock-sec", 0)) + int(entry.get("vm-clock-nsec", 0)) / 1e9,
    )


class QemuMachine:
    stop_steps: tuple[StopStep, ...] = STOP_STEPS

    def __init__(self, paths: VMPaths, state: VMState) -> None:
        self.paths = paths
        self.state = state
        self._child: subprocess.Popen[bytes] | None = None  # a foreground QEMU

    @property
    def _proc(self) -> process.ProcessId | None:
        if self.state.pid is None or self.state.pid_start is None:
            return None
        return process.ProcessId(self.state.pid, self.state.pid_start)

    def _monitor(self, timeout: float = 5.0) -> Monitor:
        from clan_vm_tasks.backends.qemu.qmp import Monitor

        return Monitor(self.paths.qmp_socket, timeout=timeout)

    # --- running it -----------------------------------------------------------------------------

    def launch(
        self, config: VMConfig, accel: AccelChoice, *, foreground: bool, notify: Notify
    ) -> Launched:
        from clan_vm_tasks.backends.qemu import host_network
        from clan_vm_tasks.backends.qemu.argv import LaunchPlan, build_argv
        from clan_vm_tasks.backends.qemu.qmp import QMPUnavailable
        from clan_vm_tasks.names import mac_for

        if accel.notice:
            notify(accel.notice)
        paths = self.paths
        self._prepare_runtime()
        offset = paths.console_log.stat().st_size if paths.console_log.exists() else 0
        with host_network.prepare(config, paths.dir) as net:
            argv = build_argv(
                LaunchPlan(
                    config=net.config,
                    accel=accel.accel,
                    mac=config.network.mac or mac_for(config.name),
                    disk=paths.disk,
                    qmp_socket=paths.qmp_socket,
                    serial_socket=paths.serial_socket,
                    console_log=paths.console_log,
                    pidfile=paths.pidfile,
                    daemonize=not foreground,
                    tap=net.tap,
                )
            )
            if foreground:
                self._child = process.launch_foreground(argv, paths.qemu_log)
                proc = process.wait_for_pidfile(paths.pidfile, self._child, PIDFILE_TIMEOUT)
            else:
                proc = process.launch_daemon(argv, paths.pidfile, paths.qemu_log)
            # Inside the network block: "auto" ports stay reserved until QEMU listens.
            try:
                self._await_qmp(proc, QMP_START_TIMEOUT)
            except QMPUnavailable as error:
                self._hard_stop(proc)
                paths.pidfile.unlink(missing_ok=True)
                raise ClanVMError(f"QEMU started but QMP never answered: {error}") from None
        self.state = dataclasses.replace(self.state, pid=proc.pid, pid_start=proc.start)
        return Launched(proc.pid, proc.start, accel.accel, offset, net.tap, net.forwards)

    def _prepare_runtime(self) -> None:
        from clan_vm_tasks.state import files

        files.private_dir(self.paths.run.parent)
        files.private_dir(self.paths.run)
        for sock in (self.paths.qmp_socket, self.paths.serial_socket):
            sock.unlink(missing_ok=True)

    def _await_qmp(self, proc: process.ProcessId, timeout: float) -> None:
        from clan_vm_tasks.backends.qemu.qmp import QMPUnavailable

        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._monitor(timeout=max(1.0, deadline - time.monotonic())) as mon:
                    mon.execute("query-status")
                return
            except QMPUnavailable:
                if time.monotonic() >= deadline or not process.is_ours(proc, self.paths.pidfile):
                    raise
                time.sleep(0.05)

    def _hard_stop(self, proc: process.ProcessId) -> str:
        for step in ("sigterm", "sigkill"):
            process.send_signal(proc, self.paths.pidfile, _SIGNALS[step])
            if process.wait_gone(proc, self.paths.pidfile, HARD_STEP_WAIT):
                return step
        raise ClanVMError(f"QEMU (pid {proc.pid}) survived SIGKILL")

    def follow(self, offset: int, on_interrupt: Callable[[], None]) -> None:
        from clan_vm_tasks.backends.qemu import console

        child = self._child
        assert child is not None, "follow() needs a foreground launch"

        def on_signal(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_signal)
        try:
            while child.poll() is None:
                try:
                    chunk = console.read_from(self.paths.console_log, offset)
                    if chunk:
                        offset += len(chunk)
                        os.write(sys.stdout.fileno(), chunk)
                    time.sleep(0.05)
                except KeyboardInterrupt:
                    on_interrupt()
                    break
            child.wait()
            os.write(sys.stdout.fileno(), console.read_from(self.paths.console_log, offset))
        finally:
            signal.signal(signal.SIGTERM, previous)

    # --- observing it ---------------------------------------------------------------------------

    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and process.is_ours(proc, self.paths.pidfile)

    def ended(self) -> Literal["crash", "poweroff"]:
        # QEMU removes its pidfile on every orderly exit: one left behind means it was killed.
        return "crash" if self.paths.pidfile.exists() else "poweroff"

    def run_state(self, timeout: float = 2.0) -> str | None:
        try:
            with self._monitor(timeout=timeout) as mon:
                status = mon.execute("query-status").get("status")
        except ClanVMError:
            return None  # alive but not answering (hung, or another client attached)
        return "paused" if status == "paused" else "running"

    # --- stopping it ----------------------------------------------------------------------------

    def stop_step(self, step: StopStep) -> None:
        proc = self._proc
        assert proc is not None
        if step.name == "acpi":
            with self._monitor() as mon:
                mon.execute("system_powerdown")
        elif step.name == "qmp-quit":
            try:
                with self._monitor(timeout=HARD_STEP_WAIT) as mon:
                    mon.execute("quit")
            except ClanVMError:
                pass  # QEMU often closes the socket before answering "quit"
        else:
            process.send_signal(proc, self.paths.pidfile, _SIGNALS[step.name])

    def wait_gone(self, timeout: float) -> bool:
        proc = self._proc
        return proc is None or process.wait_gone(proc, self.paths.pidfile, timeout)

    def release(self, state: VMState) -> None:
        from clan_vm_tasks.backends.qemu import host_network

        for leftover in (self.paths.pidfile, self.paths.qmp_socket, self.paths.serial_socket):
            leftover.unlink(missing_ok=True)
        if state.tap:
            host_network.delete_tap(state.tap)

    # --- pausing and live snapshots -------------------------------------------------------------

    def set_paused(self, paused: bool) -> None:
        with self._monitor() as mon:
            mon.execute("stop" if paused else "cont")

    def _inserted(self, mon: Monitor) -> dict[str, Any]:
        for device in mon.execute("query-block"):
            if device.get("device") == DRIVE_ID and "inserted" in device:
                inserted: dict[str, Any] = device["inserted"]
                return inserted
        raise ClanVMError(f"QEMU has no drive {DRIVE_ID}")

    def live_snapshots(self) -> list[Snapshot]:
        with self._monitor(timeout=JOB_TIMEOUT) as mon:
            found = self._inserted(mon).get("image", {}).get("snapshots", [])
        return [_parse_snapshot(s) for s in found]

    def live_snapshot(self, command: SnapshotCommand, tag: str) -> None:
        from clan_vm_tasks.backends.qemu.jobs import run_job

        with self._monitor(timeout=JOB_TIMEOUT) as mon:
            node = str(self._inserted(mon)["node-name"])
            job: dict[str, Any] = {"tag": tag, "devices": [node]}
            if command != "delete":
                job["vmstate"] = node
            run_job(mon, f"snapshot-{command}", job, JOB_TIMEOUT)

    # --- its disk -------------------------------------------------------------------------------

    def disk_info(self) -> dict[str, Any]:
        from clan_vm_tasks.backends.qemu import image

        return image.info(self.paths.disk) if self.paths.disk.exists() else {}

    def disk_size_mib(self) -> int:
        from clan_vm_tasks.backends.qemu import image

        return image.size_mib_ceil(self.paths.disk)

    def grow_disk(self, size_mib: int) -> None:
        from clan_vm_tasks.backends.qemu import image

        image.resize(self.paths.disk, size_mib)

    def disk_snapshots(self) -> list[Snapshot]:
        from clan_vm_tasks.backends.qemu import image

        return [_parse_snapshot(s) for s in image.snapshots(self.paths.disk)]

    def disk_snapshot(self, command: SnapshotCommand, tag: str) -> None:
        from clan_vm_tasks.backends.qemu import image

        flag = {"save": "-c", "load": "-a", "delete": "-d"}[command]
        image.snapshot(self.paths.disk, flag, tag)

    # --- its console ----------------------------------------------------------------------------

    def wait_for_text(
        self, text: str, offset: int, timeout: float, alive: Callable[[], bool]
    ) -> bool:
        from clan_vm_tasks.backends.qemu import console

        return console.wait_for_text(self.paths.console_log, text, offset, timeout, alive)

    def console_output(self, offset: int = 0) -> bytes:
        from clan_vm_tasks.backends.qemu import console

        return console.read_from(self.paths.console_log, offset)

    def console_tail(self, offset: int, count: int = 15) -> list[str]:
        from clan_vm_tasks.backends.qemu import console

        return console.last_lines(self.paths.console_log, offset, count)

    def attach_console(self) -> str:
        from clan_vm_tasks.backends.qemu import console

        return console.attach(self.paths.serial_socket)


class QemuBackend:
    """QEMU processes on this machine, disks as qcow2 files in the state directory."""

    def machine(self, paths: VMPaths, state: VMState) -> QemuMachine:
        return QemuMachine(paths, state)

    def choose_accel(self, requested: str) -> AccelChoice:
        from clan_vm_tasks.backends.qemu import accel

        return accel.choose(requested)

    def create_disk(self, path: Path, size_mib: int, base: Path | None) -> None:
        from clan_vm_tasks.backends.qemu import image

        if base is not None:
            image.create_overlay(path, base, size_mib)
        else:
            image.create(path, size_mib)

    def image_size_mib(self, path: Path) -> int:
        from clan_vm_tasks.backends.qemu import image

        return image.size_mib_ceil(path)
