"""The seam between the VM operations and a hypervisor.

``clan_vm_tasks.vm`` decides what happens to a VM (state rules, locks, history);
a backend does it on a hypervisor. A ``Backend`` makes disks and hands out one
``Machine`` per VM; a ``Machine`` launches, observes, stops, pauses, snapshots
and shows the console of that VM. The local QEMU backend
(``clan_vm_tasks.backends.qemu``) is the implementation today; every method is
bounded in time, and failures are ``ClanVMError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from clan_vm_tasks.render import Notify

if TYPE_CHECKING:
    from clan_vm_tasks.models import VMConfig
    from clan_vm_tasks.state.store import VMPaths, VMState

# "guest": asks the guest (skipped by --force and for a paused VM); "hypervisor": asks the
# hypervisor to end the VM (skipped by --force); "force": ends it whatever it does.
StepKind = Literal["guest", "hypervisor", "force"]
SnapshotCommand = Literal["save", "load", "delete"]


@dataclass(frozen=True)
class StopStep:
    name: str  # as the user sees it, e.g. "acpi" or "sigkill"
    kind: StepKind
    words: str  # what it means when this step ended the VM
    doing: str  # what is happening when this step is tried


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    notice: str | None  # one line for the user when we fell back or were overridden


@dataclass(frozen=True)
class Launched:
    """A VM the hypervisor runs and whose control channel answers."""

    pid: int
    pid_start: int  # so a recycled pid is never taken for this VM
    accel: str
    console_offset: int  # where this boot's console output begins
    tap: str | None = None  # a tap made for this boot; released when it ends
    forwards: list[str] = field(default_factory=list)  # host ports as chosen for this boot


@dataclass(frozen=True)
class Ending:
    """How a VM that ran ended without a stop of ours."""

    action: Literal["crash", "poweroff"]  # the history event; "crash" leaves the VM crashed
    step: str | None  # what ended it, for ``last_stop`` (None for a crash)
    details: str  # one sentence for the history and error messages


@dataclass(frozen=True)
class Snapshot:
    name: str
    date: str  # ISO 8601, UTC
    vm_state_size: int  # bytes of saved memory/device state; 0 for a disk-only snapshot
    vm_clock: float  # seconds the guest had run when it was taken

    @property
    def memory(self) -> bool:
        return self.vm_state_size > 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "memory": self.memory}


class Machine(Protocol):
    """One VM on a hypervisor, as last recorded in its ``VMState``."""

    stop_steps: tuple[StopStep, ...]  # the stop ladder, gentlest first

    # --- running it
    def launch(
        self,
        config: VMConfig,
        accel: AccelChoice,
        *,
        foreground: bool,
        notify: Notify,
        on_spawned: Callable[[int, int], None],
    ) -> Launched:
        """Boot CONFIG; return once the hypervisor's control channel answers.

        ON_SPAWNED(pid, pid_start) is called as soon as the VM's process is known, before
        waiting for it. From then on this Machine stands for the launched VM. On failure
        nothing of this launch is left running.
        """

    def abandon(self) -> None:
        """End at once whatever a launch of this VM started, found by the VM's own paths
        even when no pid was recorded, and release what it made on the host."""

    def follow(self, offset: int, on_interrupt: Callable[[], None]) -> None:
        """After a foreground launch: stream the console until the VM ends; Ctrl-C or SIGTERM
        call ON_INTERRUPT (which stops the VM)."""

    # --- observing it
    def alive(self) -> bool:
        """The recorded VM still runs (cheap: used by ``list``)."""

    def ended(self) -> Ending:
        """How a recorded VM that is no longer alive ended."""

    def find_running(self) -> Launched | None:
        """This VM running on the hypervisor although our record does not say so (cheap
        when it does not run: ``list`` asks it of stopped VMs whose pidfile exists)."""

    def run_state(self, timeout: float = 2.0) -> str | None:
        """``running`` or ``paused`` as the hypervisor says; None when it does not answer."""

    # --- stopping it
    def stop_step(self, step: StopStep) -> None:
        """Try one step of the ladder; ClanVMError when it could not even be tried."""

    def wait_gone(self, timeout: float) -> bool:
        """True once the VM has ended (within TIMEOUT seconds)."""

    def release(self, state: VMState) -> None:
        """Remove what a boot that has ended left on the host (sockets, pidfile, tap)."""

    # --- pausing and live snapshots
    def set_paused(self, paused: bool) -> None: ...

    def live_snapshots(self) -> list[Snapshot]: ...

    def live_snapshot(self, command: SnapshotCommand, tag: str) -> None: ...

    # --- its disk while it is stopped
    def disk_info(self) -> dict[str, Any]: ...

    def disk_size_mib(self) -> int: ...

    def grow_disk(self, size_mib: int) -> None: ...

    def disk_snapshots(self) -> list[Snapshot]: ...

    def disk_snapshot(self, command: SnapshotCommand, tag: str) -> None: ...

    # --- its console
    def wait_for_text(
        self, text: str, offset: int, timeout: float, alive: Callable[[], bool]
    ) -> bool: ...

    def console_output(self, offset: int = 0) -> bytes: ...

    def console_tail(self, offset: int, count: int = 15) -> list[str]: ...

    def attach_console(self) -> str:
        """Relay the console to this terminal; returns why it ended ("detached", ...)."""


class Backend(Protocol):
    """A hypervisor: where VMs of one kind run."""

    def machine(self, paths: VMPaths, state: VMState) -> Machine: ...

    def choose_accel(self, requested: str) -> AccelChoice: ...

    def create_disk(self, path: Path, size_mib: int, base: Path | None) -> None:
        """A new disk at PATH: empty, or a copy-on-write overlay on BASE (never written)."""

    def check_config(self, config: VMConfig) -> None:
        """Refuse (InvalidInput) a definition this backend cannot run as given, such as extra
        arguments that clash with its own."""

    def check_base_image(self, path: Path) -> int:
        """Refuse (InvalidInput) a base image that is not safe to lay a disk over; its
        virtual size in MiB, rounded up."""
