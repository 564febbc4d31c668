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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clan_vm_tasks.backends.base import (
    AccelChoice,
    Ending,
    Launched,
    Snapshot,
    SnapshotCommand,
    StopStep,
)
from clan_vm_tasks.backends.qemu import console, events, process
from clan_vm_tasks.errors import AgentUnavailable, ClanVMError
from clan_vm_tasks.render import Notify

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from clan_vm_tasks.backends.qemu import serial
    from clan_vm_tasks.backends.qemu.agent import AgentSession
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


def _qmp_start_timeout() -> float:
    """How long QEMU gets to answer QMP after it daemonized: $CLAN_VM_QMP_TIMEOUT seconds
    (for a loaded host), else QMP_START_TIMEOUT."""
    try:
        seconds = float(os.environ.get("CLAN_VM_QMP_TIMEOUT", ""))
    except ValueError:
        return QMP_START_TIMEOUT
    return seconds if 0 < seconds < float("inf") else QMP_START_TIMEOUT


def _parse_snapshot(entry: dict[str, Any]) -> Snapshot:
    from datetime import UTC, datetime

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
        self,
        config: VMConfig,
        accel: AccelChoice,
        *,
        foreground: bool,
        notify: Notify,
        on_spawned: Callable[[int, int], None],
    ) -> Launched:
        from clan_vm_tasks.backends.qemu import host_network, provision, share_dirs, virtiofs
        from clan_vm_tasks.backends.qemu.argv import LaunchPlan, build_argv
        from clan_vm_tasks.backends.qemu.qmp import QMPUnavailable
        from clan_vm_tasks.names import mac_for

        if accel.notice:
            notify(accel.notice)
        paths = self.paths
        provision.make_missing(config, paths)  # declared since it was made, or removed by hand
        self._prepare_runtime(config)
        self._new_logs()
        # Shared directories opened once (QEMU and virtiofsd get these); "auto" ports: the
        # ones of the last boot while they are free (stable SSH targets).
        with (
            share_dirs.opened(config) as (shared, fds),
            host_network.prepare(shared, paths.dir, self.state.forwards) as net,
            virtiofs.serving(shared, paths),  # its virtiofsds, ended if the launch fails
        ):
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
                    events=paths.events,
                    agent_pipe=paths.agent_pipe,
                    data_socket=paths.data_socket,
                    daemonize=not foreground,
                    tap=net.tap,
                )
            )
            if foreground:
                self._child = process.launch_foreground(argv, paths.qemu_log, fds)
                proc = process.wait_for_pidfile(paths.pidfile, self._child, PIDFILE_TIMEOUT)
            else:
                proc = process.launch_daemon(argv, paths.pidfile, paths.qemu_log, fds)
            self.state = dataclasses.replace(
                self.state, pid=proc.pid, pid_start=proc.start, tap=net.tap
            )
            on_spawned(proc.pid, proc.start)
            # Inside the network block: "auto" ports stay reserved until QEMU listens.
            try:
                self._await_qmp(proc, _qmp_start_timeout())
            except QMPUnavailable as error:
                self._hard_stop(proc)
                paths.pidfile.unlink(missing_ok=True)
                raise ClanVMError(f"QEMU started but QMP never answered: {error}") from None
        return Launched(proc.pid, proc.start, accel.accel, 0, net.tap, net.forwards)

    def _new_logs(self) -> None:
        """One boot per console log (the previous boot's stays as console.log.1), and a fresh
        event log: QEMU reads our capabilities request from EVENTS.in and writes every QMP
        event (SHUTDOWN with its reason, GUEST_PANICKED) to EVENTS.out, with nothing of
        ours resident."""
        log = self.paths.console_log
        if log.exists():
            os.replace(log, log.with_name(log.name + ".1"))
        events = self.paths.events
        events.with_suffix(".in").write_bytes(b'{"execute": "qmp_capabilities"}\n')
        events.with_suffix(".out").write_bytes(b"")

    def abandon(self) -> None:
        found = process.writing(self.paths.pidfile)
        for proc in found:
            process.send_signal(proc, self.paths.pidfile, signal.SIGKILL)
        for proc in found:
            if not process.wait_gone(proc, self.paths.pidfile, HARD_STEP_WAIT):
                raise ClanVMError(f"QEMU (pid {proc.pid}) survived SIGKILL")
        if self._child is not None:
            self._child.wait(HARD_STEP_WAIT)
        self.release(self.state)

    def _prepare_runtime(self, config: VMConfig) -> None:
        from clan_vm_tasks.state import files

        files.private_dir(self.paths.run.parent)
        files.private_dir(self.paths.run)
        for leftover in self.paths.channels:
            leftover.unlink(missing_ok=True)
        if config.agent:
            for fifo in self.paths.agent_fifos:
                os.mkfifo(fifo, 0o600)

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
        child = self._child
        assert child is not None, "follow() needs a foreground launch"
        console.follow(self.paths.console_log, offset, child, on_interrupt)

    # --- observing it ---------------------------------------------------------------------------

    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and process.is_ours(proc, self.paths.pidfile)

    def ended(self) -> Ending:
        # QEMU removes its pidfile on every orderly exit: one left behind means it was killed.
        if self.paths.pidfile.exists():
            return Ending("crash", None, f"QEMU (pid {self.state.pid}) vanished without a stop")
        reason, panicked = events.shutdown_reason(self.paths.events.with_suffix(".out"))
        if panicked or reason == "guest-panic":
            return Ending("crash", None, "the guest kernel panicked")
        if reason == "guest-reset":
            if b"Kernel panic" in self.console_output(0):
                return Ending(
                    "crash", None, "the guest kernel panicked (and QEMU exited, as -no-reboot asks)"
                )
            return Ending(
                "poweroff",
                "guest-reboot",
                "the guest rebooted (and QEMU exited, as -no-reboot asks)",
            )
        if reason in ("host-signal", "host-qmp-quit", "host-error"):
            return Ending("crash", None, events.HOST_REASONS[reason])
        return Ending("poweroff", "guest-poweroff", "the guest powered itself off")

    def find_running(self) -> Launched | None:
        proc = process.read_pidfile(self.paths.pidfile)
        if proc is None or not process.is_ours(proc, self.paths.pidfile):
            return None
        from clan_vm_tasks.backends.qemu.argv import describe

        accel, tap, forwards = describe(process.argv_of(proc))
        return Launched(proc.pid, proc.start, accel, 0, tap, forwards)

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
        from clan_vm_tasks.backends.qemu import host_network, virtiofs

        paths = self.paths
        virtiofs.end(paths, grace=0.5)  # exits by itself once QEMU has gone, or never came
        for leftover in (paths.pidfile, *paths.channels):
            leftover.unlink(missing_ok=True)
        # A tap we made is named after the VM directory: found even if the record lost it.
        host_network.delete_tap(state.tap or host_network.tap_name(self.paths.dir))

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

    def details(self, config: VMConfig) -> dict[str, Any]:
        from clan_vm_tasks.backends import image
        from clan_vm_tasks.models import disk_order

        paths = self.paths
        disks = [image.described(paths.disk, backing=True)]
        order = sorted(config.extra_disks, key=disk_order)  # as the guest sees them
        disks += [image.described(paths.extra_disk(n)) for n in order]
        return {
            "disks": disks,
            "console_log": str(paths.console_log),
            "qmp_socket": str(paths.qmp_socket),
            "serial_socket": str(paths.serial_socket),
            "spice_socket": str(paths.spice_socket) if config.graphics else None,
        }

    def update_disks(self, old: VMConfig, new: VMConfig, notify: Notify) -> None:
        from clan_vm_tasks.backends.qemu import provision

        provision.update(old, new, self.paths, notify)

    def disk_size_mib(self) -> int:
        from clan_vm_tasks.backends import image

        return image.size_mib_ceil(self.paths.disk)

    def grow_disk(self, size_mib: int) -> None:
        from clan_vm_tasks.backends import image

        image.resize(self.paths.disk, size_mib)

    def disk_snapshots(self) -> list[Snapshot]:
        from clan_vm_tasks.backends import image

        return [_parse_snapshot(s) for s in image.snapshots(self.paths.disk)]

    def repair_disk(self) -> str | None:
        from clan_vm_tasks.backends import image

        return image.repair(self.paths.disk)

    def disk_snapshot(self, command: SnapshotCommand, tag: str) -> None:
        from clan_vm_tasks.backends import image

        flag = {"save": "-c", "load": "-a", "delete": "-d"}[command]
        image.snapshot(self.paths.disk, flag, tag)

    # --- its guest agent ------------------------------------------------------------------------

    def agent(self, timeout: float, answered: bool = False) -> AgentSession:
        from clan_vm_tasks.backends.qemu.agent import AgentSession

        # Nothing in the guest listens: no waiting for it. An agent that answered in this run
        # is taken to be there (asking QMP costs a connection on every session).
        if not answered and self.agent_port_open() is False:
            raise AgentUnavailable("no agent in the guest has opened its port")
        return AgentSession(self.paths.agent_fifos, self.paths.agent_socket, timeout)

    def agent_port_open(self) -> bool | None:
        """Whether the guest has opened its agent's virtio-serial port, as QEMU sees it (a
        running qemu-ga keeps it open); None when QMP cannot tell."""
        return self._port_open("agent0")

    def data_socket(self) -> Path | None:
        # A VM started by an earlier version has none.
        return self.paths.data_socket if self.paths.data_socket.exists() else None

    def data_port_open(self) -> bool | None:
        return self._port_open("data0")

    def _port_open(self, chardev_id: str) -> bool | None:
        """Whether a guest process holds the virtio-serial port of CHARDEV_ID open."""
        try:
            with self._monitor(timeout=2.0) as mon:
                chardevs = mon.execute("query-chardev")
        except ClanVMError:
            return None
        for chardev in chardevs if isinstance(chardevs, list) else []:
            if chardev.get("label") == chardev_id:
                return bool(chardev.get("frontend-open"))
        return None

    # --- its console ----------------------------------------------------------------------------

    def wait_for_text(
        self, text: str, offset: int, timeout: float, alive: Callable[[], bool]
    ) -> bool:
        return console.wait_for_text(self.paths.console_log, text, offset, timeout, alive)

    def console_output(self, offset: int = 0) -> bytes:
        return console.read_from(self.paths.console_log, offset)

    def console_tail(self, offset: int, count: int = 15) -> list[str]:
        return console.last_lines(self.paths.console_log, offset, count)

    def attach_console(self) -> str:
        from clan_vm_tasks.backends.qemu import serial

        return serial.attach(self.paths.serial_socket)

    def open_console(self, on_data: Callable[[bytes], None]) -> serial.Stream:
        from clan_vm_tasks.backends.qemu import serial

        return serial.Stream(self.paths.serial_socket, on_data)
