"""The seam between the VM operations and a hypervisor.

``clan_vm_tasks.vm`` decides what happens to a VM (state rules, locks, history);
a backend does it on a hypervisor. A ``Backend`` makes disks and hands out one
``Machine`` per VM; a ``Machine`` launches, observes, stops, pauses, snapshots
and shows the console of that VM. The local QEMU backend
(``clan_vm_tasks.backends.qemu``) runs VMs on this machine; a ``HostedBackend``
(``clan_vm_tasks.backends.libvirt``) runs them on a libvirt host, local or remote.
Every method is bounded in time, and failures are ``ClanVMError`` (``HostUnreachable``
when the host does not answer).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from clan_vm_tasks.errors import ClanVMError
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


class HostUnreachable(ClanVMError):
    """The host of a VM did not answer (in time): its VMs' state is unknown, not stopped."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"host {host} is unreachable: {reason}")
        self.host = host
        self.reason = reason


@dataclass(frozen=True)
class Launched:
    """A VM the hypervisor runs and whose control channel answers."""

    pid: int | None  # the local QEMU process; None for a VM on a libvirt host
    pid_start: int | None  # so a recycled pid is never taken for this VM
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


class GuestAgent(Protocol):
    """A session with the QEMU guest agent of a running VM: synchronised, one command at a
    time. Failures are AgentUnavailable (no answer in time), AgentError (an error reply) or
    AgentInvalidReply (something that is no reply: too large, too deep, not JSON)."""

    # Bytes of file data a guest-file-read may ask for and a guest-file-write (or a command's
    # input) may carry on the way to this agent.
    read_chunk: int
    write_chunk: int

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any: ...


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

    def repair_disk(self) -> str | None:
        """After an interrupted offline disk operation: repair what the interruption can leave;
        what was repaired, or None when the disk was sound."""

    # --- its guest agent
    def agent(self, timeout: float) -> AbstractContextManager[GuestAgent]:
        """A session with the guest agent; AgentUnavailable when it does not answer within
        TIMEOUT (a guest without an agent never makes this hang)."""

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


class HostedBackend(Backend, Protocol):
    """VMs on a libvirt host, this machine or another: each VM's definition and disk are
    made there at create and taken away at delete; the local state directory keeps its
    definition, history and record, but whether it runs is always asked of the host."""

    host: str  # as the user named it: a name from the settings file, or a URI
    uri: str  # the libvirt URI it stands for
    address: str  # where its VMs' forwarded ports are reached from this machine

    def place(self, config: VMConfig, state_dir: Path, scratch: Path) -> None:
        """Make the VM on the host, stopped: its disk and its definition, marked as made by
        STATE_DIR (SCRATCH: a directory of this machine for files made on the way). What a
        killed ``place`` left there the next ``place`` or ``remove`` takes."""

    def remove(self, name: str, state_dir: Path, *, keep_disk: bool) -> str | None:
        """Take the VM off the host (only what STATE_DIR made); where its kept disk is."""

    def guest_address(self, name: str) -> str | None:
        """The running guest's own IPv4 address (a bridged VM), if the host can tell."""

    def details(self, name: str) -> dict[str, Any]:
        """What ``show`` adds: the host, its URI, the domain, the disk and console log there."""

    def survey(self, timeout: float) -> None:
        """Ask the host once for the state of all its VMs; until ``forget_survey`` its
        machines answer ``alive``, ``ended`` and ``find_running`` from that answer (``list``
        asks each host once, not once per VM)."""

    def forget_survey(self) -> None: ...
