"""One VM as a domain on a libvirt host: the ``Machine`` of the libvirt backend.

Whether it runs, and how it ended, is asked of the host every time (never taken from
a record of ours); a host that does not answer is ``HostUnreachable``, never a
stopped VM. A start defines the domain again from the VM's definition, starts it
paused, adds its port forwards and opens its console, and only then lets it run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from clan_vm_tasks.backends.base import (
    AccelChoice,
    ConsoleStream,
    Ending,
    Launched,
    Snapshot,
    SnapshotCommand,
    StopStep,
)
from clan_vm_tasks.backends.libvirt import domain, domain_xml, network, storage
from clan_vm_tasks.backends.libvirt.agent import AgentSession
from clan_vm_tasks.backends.libvirt.connection import Host, LibvirtFailure, lib
from clan_vm_tasks.backends.libvirt.console import Console, attach, lines
from clan_vm_tasks.backends.ssh import display
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.render import Notify

if TYPE_CHECKING:
    from pathlib import Path

    from clan_vm_tasks.models import PortForward, VMConfig
    from clan_vm_tasks.state.store import VMState

START_TIMEOUT = 120.0  # QEMU under TCG on a loaded host
SNAPSHOT_TIMEOUT = 300.0
POLL = 0.1

STOP_STEPS: tuple[StopStep, ...] = (
    StopStep(
        "acpi",
        "guest",
        "the guest shut down after the ACPI power button",
        "pressing the ACPI power button",
    ),
    StopStep(
        "destroy",
        "force",
        "libvirt destroyed the domain (SIGTERM, then SIGKILL)",
        "destroying the domain",
    ),
)


def _forwards(recorded: list[str]) -> list[PortForward]:
    """Recorded forwards (``tcp:ADDRESS:PORT->GUEST``) as fixed ones, to add them again."""
    from clan_vm_tasks.models import recorded_forward  # lazy: list never needs it

    return [found[1] for found in map(recorded_forward, recorded) if found is not None]


class LibvirtMachine:
    stop_steps: tuple[StopStep, ...] = STOP_STEPS

    def __init__(self, host: Host, name: str, owner: str, state: VMState) -> None:
        self.host = host
        self.name = name
        self.owner = owner
        self.state = state
        self._console: Console | None = None  # opened by launch, for --wait-for and follow

    def _domain(self) -> Any:
        dom = self.host.domain(self.name)
        if dom is None:
            raise ClanVMError(f"VM '{self.name}' has no domain on host {self.host.label}")
        return dom

    def _state(self) -> tuple[int, int] | None:
        return self.host.state(self.name)

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
        libvirt = lib()
        if accel.notice:
            notify(accel.notice)
        host = self.host
        pool = storage.pool(host)
        if storage.lookup(host, pool, storage.disk_volume(self.name)) is None:
            raise ClanVMError(
                f"the disk of VM '{self.name}' ({storage.disk_volume(self.name)} in pool "
                f"'{storage.POOL}') is missing on host {host.label}"
            )
        existing = host.domain(self.name)
        if existing is not None:
            domain.check_ours(host, existing, self.name, self.owner)
        domain_type = "kvm" if accel.accel == "kvm" else "qemu"
        dom = domain.define(host, pool, config, self.owner, domain_type, existing)
        # Paused first: the console is open and the forwards are there before the guest runs.
        host.call(dom.createWithFlags, libvirt.VIR_DOMAIN_START_PAUSED, timeout=START_TIMEOUT)
        try:
            forwards = []
            if config.network.mode in ("user", "nat"):
                wanted = config.network.forward_ports
                forwards = network.add(host, dom, wanted, self.state.forwards)
            show = (lambda data: _show(data)) if foreground else (lambda data: None)
            self._console = Console(host, dom, on_data=show)
            host.call(dom.resume)
        except BaseException:
            with contextlib.suppress(ClanVMError):
                host.call(dom.destroy)
            raise
        return Launched(None, None, accel.accel, 0, None, forwards)

    def abandon(self) -> None:
        dom = self.host.domain(self.name)
        if dom is not None and self.host.call(dom.isActive):
            self.host.call(dom.destroy)

    def follow(self, offset: int, on_interrupt: Callable[[], None]) -> None:
        def on_signal(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            while self.alive():
                try:
                    time.sleep(0.2)
                except KeyboardInterrupt:
                    on_interrupt()
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # --- observing it ---------------------------------------------------------------------------

    def alive(self) -> bool:
        state = self._state()
        return state is not None and state[0] in domain.ACTIVE_STATES

    def ended(self) -> Ending:
        return domain.ending(self._state(), f"host {self.host.label}")

    def find_running(self) -> Launched | None:
        if not self.alive():
            return None
        dom = self._domain()
        forwards = network.current(self.host, dom)
        return Launched(None, None, domain.domain_type(self.host, dom), 0, None, forwards)

    def run_state(self, timeout: float = 2.0) -> str | None:
        try:
            state = self.host.state(self.name, timeout=max(timeout, 5.0))
        except ClanVMError:
            return None
        if state is None or state[0] not in domain.ACTIVE_STATES:
            return None
        return "paused" if state[0] == domain.PAUSED else "running"

    # --- stopping it ----------------------------------------------------------------------------

    def stop_step(self, step: StopStep) -> None:
        dom = self._domain()
        if step.name == "acpi":
            flags = lib().VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
            self.host.call(dom.shutdownFlags, flags)
        else:
            with contextlib.suppress(LibvirtFailure):  # it may have ended meanwhile
                self.host.call(dom.destroy)

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)
        return True

    def release(self, state: VMState) -> None:
        pass  # nothing of a boot is left on this machine; the host keeps the domain

    # --- pausing and snapshots (libvirt's internal snapshots, with memory while it runs) --

    def set_paused(self, paused: bool) -> None:
        dom = self._domain()
        self.host.call(dom.suspend if paused else dom.resume)

    def _snapshots(self) -> list[Snapshot]:
        dom = self._domain()
        found = []
        for snap in self.host.call(dom.listAllSnapshots, 0):
            created, memory, ram = domain_xml.snapshot_facts(self.host.call(snap.getXMLDesc, 0))
            found.append(
                Snapshot(
                    name=snap.getName(),
                    date=datetime.fromtimestamp(created, UTC).isoformat(timespec="seconds"),
                    vm_state_size=ram if memory else 0,  # libvirt tells the guest's memory size
                    vm_clock=0.0,
                )
            )
        return sorted(found, key=lambda s: s.date)

    def live_snapshots(self) -> list[Snapshot]:
        return self._snapshots()

    def disk_snapshots(self) -> list[Snapshot]:
        return self._snapshots()

    def _snapshot(self, command: SnapshotCommand, tag: str, running: bool) -> None:
        libvirt = lib()
        dom = self._domain()
        if command == "save":
            spec = domain_xml.snapshot_xml(tag)
            self.host.call(dom.snapshotCreateXML, spec, 0, timeout=SNAPSHOT_TIMEOUT)
            return
        snap = self.host.call(dom.snapshotLookupByName, tag, 0)
        if command == "delete":
            self.host.call(snap.delete, 0, timeout=SNAPSHOT_TIMEOUT)
            return
        paused = self.run_state() == "paused"
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
        if running and not paused:
            flags = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
        memory = domain_xml.snapshot_facts(self.host.call(snap.getXMLDesc, 0))[1]
        self.host.call(dom.revertToSnapshot, snap, flags if memory else 0, timeout=SNAPSHOT_TIMEOUT)
        if running:
            # A revert with memory restarts QEMU: the forwards went with the old one.
            network.add(self.host, dom, _forwards(self.state.forwards), [])
        elif memory:
            self.host.call(dom.destroy)  # a stopped VM gets the disk back, not the memory

    def live_snapshot(self, command: SnapshotCommand, tag: str) -> None:
        self._snapshot(command, tag, running=True)

    def disk_snapshot(self, command: SnapshotCommand, tag: str) -> None:
        self._snapshot(command, tag, running=False)

    # --- its disk, a volume on the host ---------------------------------------------------------

    def _disk(self) -> Any:
        vol = storage.lookup(self.host, storage.pool(self.host), storage.disk_volume(self.name))
        if vol is None:
            raise ClanVMError(f"the disk of VM '{self.name}' is missing on host {self.host.label}")
        return vol

    def details(self, config: VMConfig) -> dict[str, Any]:
        pool = storage.pool(self.host)
        vol = self._disk()
        _kind, capacity, allocation = self.host.call(vol.info)
        disk = {
            "path": str(self.host.call(vol.path)),
            "format": "qcow2",
            "virtual_size": -(-int(capacity) // (1 << 20)),  # MiB, as every size shown
            "actual_size": -(-int(allocation) // (1 << 20)),
            "backing_file": None,
            "backing_format": None,
        }
        directory = storage.pool_path(self.host, pool)
        return {
            "disks": [disk],
            "console_log": f"{directory}/{storage.console_volume(self.name)}",
            "qmp_socket": None,
            "serial_socket": None,
            "spice_socket": None,
            "uri": display(self.host.uri),
            "domain": self.name,
        }

    def update_disks(self, old: VMConfig, new: VMConfig, notify: Notify) -> None:
        # Extra disks are not supported here; its own share directories are made at start.
        if new.disk_size != old.disk_size:
            self.grow_disk(new.disk_size)

    def disk_size_mib(self) -> int:
        return storage.size_mib(self.host, self._disk())

    def grow_disk(self, size_mib: int) -> None:
        vol = self._disk()
        _kind, _capacity, allocation = self.host.call(vol.info)
        if size_mib << 20 < allocation:  # libvirt's rule, although the image would grow
            raise ClanVMError(
                f"libvirt on host {self.host.label} sizes no disk below the space it takes "
                f"there ({int(allocation) >> 20} MiB, its snapshots included)"
            )
        self.host.call(vol.resize, size_mib << 20, 0, timeout=storage.TRANSFER_TIMEOUT)

    def repair_disk(self) -> str | None:
        # libvirtd runs qemu-img on the host and finishes it whether or not we are still
        # there: an interrupted disk operation leaves nothing half done for us to repair.
        return None

    # --- its guest agent ------------------------------------------------------------------------

    def agent(self, timeout: float, answered: bool = False) -> AgentSession:
        return AgentSession(self.host, self._domain(), timeout)

    def agent_port_open(self) -> bool | None:
        return None  # libvirt holds its agent connection open: asking the agent is quick

    def data_socket(self) -> Path | None:
        return None  # a copy goes through libvirt's agent connection

    def data_port_open(self) -> bool | None:
        return None

    # --- its console ----------------------------------------------------------------------------

    def wait_for_text(
        self, text: str, offset: int, timeout: float, alive: Callable[[], bool]
    ) -> bool:
        if self._console is not None:
            return self._console.wait_for(text, offset, timeout)
        deadline = time.monotonic() + timeout
        while text.encode() not in self.console_output(offset):
            if time.monotonic() >= deadline or not alive():
                return False
            time.sleep(0.5)
        return True

    def console_output(self, offset: int = 0) -> bytes:
        pool = storage.pool(self.host)
        return storage.download(self.host, pool, storage.console_volume(self.name))[offset:]

    def console_tail(self, offset: int, count: int = 15) -> list[str]:
        if self._console is not None:
            return lines(bytes(self._console.output[offset:]), count)
        return lines(self.console_output(offset), count)

    def attach_console(self) -> str:
        return attach(self.host, self._domain())

    def open_console(self, on_data: Callable[[bytes], None]) -> ConsoleStream:
        return Console(self.host, self._domain(), take_over=False, on_data=on_data, keep=False)


def _show(data: bytes) -> None:
    with contextlib.suppress(OSError):  # a terminal that went away reads nothing
        os.write(sys.stdout.fileno(), data)
