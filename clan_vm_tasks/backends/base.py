"""The seam between the VM operations and a hypervisor.

``clan_vm_tasks.vm`` decides what happens to a VM (state rules, locks, history);
a backend does it on a hypervisor. A ``Backend`` makes disks and hands out one
``Machine`` per VM; a ``Machine`` launches, observes, stops, pauses, snapshots
and shows the console of that VM. The local QEMU backend
(``clan_vm_tasks.backends.qemu``) runs VMs on this machine; the libvirt backend
(``clan_vm_tasks.backends.libvirt``) runs them on a libvirt host, local or remote.
``clan_vm_tasks.vm.machines`` is the one place that chooses between them.
Every method is bounded in time, and failures are ``ClanVMError`` (``HostUnreachable``
when the host does not answer).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from clan_vm_tasks.render import Notify

if TYPE_CHECKING:
    from clan_vm_tasks.backends.netinfo import Address, Network
    from clan_vm_tasks.models import VMConfig
    from clan_vm_tasks.state.store import Store, VMPaths, VMState

# "guest": asks the guest (skipped by --force and for a paused VM); "hypervisor": asks the
# hypervisor to end the VM (skipped by --force); "force": ends it whatever it does.
StepKind = Literal["guest", "hypervisor", "force"]
SnapshotCommand = Literal["save", "load", "delete"]


# The virtio-serial port whose bytes a guest command the agent started reads (``vm/dataport``).
DATA_PORT = "org.clan.vm.data"


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


class ConsoleStream(Protocol):
    """A console opened for a program rather than a terminal (``Machine.open_console``)."""

    def send(self, data: bytes) -> bool:
        """Send DATA to the guest; False when the console has gone."""

    def close(self) -> None: ...


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

    # --- what show tells of it
    def details(self, config: VMConfig) -> dict[str, Any]:
        """``show``'s fields of this backend: ``disks`` (the root disk first: ``path``,
        ``format``, ``virtual_size`` and ``actual_size`` in MiB, ``backing_file``,
        ``backing_format``),
        ``console_log``, ``qmp_socket``, ``serial_socket``, ``spice_socket`` (None where
        there is none), and for a VM on a libvirt host ``uri`` and ``domain``."""

    # --- its disks while it is stopped
    def update_disks(self, old: VMConfig, new: VMConfig, notify: Notify) -> None:
        """After its definition changed from OLD to NEW: grow the disks NEW declares larger,
        make the extra disks and own directories it adds, and say where the data of those
        it no longer declares stays."""

    def disk_size_mib(self) -> int: ...

    def grow_disk(self, size_mib: int) -> None: ...

    def disk_snapshots(self) -> list[Snapshot]: ...

    def disk_snapshot(self, command: SnapshotCommand, tag: str) -> None: ...

    def repair_disk(self) -> str | None:
        """After an interrupted offline disk operation: repair what the interruption can leave;
        what was repaired, or None when the disk was sound."""

    # --- its guest agent
    def agent(self, timeout: float, answered: bool = False) -> AbstractContextManager[GuestAgent]:
        """A session with the guest agent; AgentUnavailable when it does not answer within
        TIMEOUT. An agent that has not ANSWERED in this run is looked for first where the
        hypervisor can tell, so a guest without one is told at once."""

    def agent_port_open(self) -> bool | None:
        """Whether an agent in the guest holds its port open, as the hypervisor sees it (a
        running qemu-ga does); None when it cannot tell without asking the agent."""

    def data_socket(self) -> Path | None:
        """The host end of the VM's data port (``vm/dataport``), None where it has none."""

    def data_port_open(self) -> bool | None:
        """Whether a guest process holds the data port open; None when it cannot tell."""

    # --- its console
    def wait_for_text(
        self, text: str, offset: int, timeout: float, alive: Callable[[], bool]
    ) -> bool: ...

    def console_output(self, offset: int = 0) -> bytes: ...

    def console_tail(self, offset: int, count: int = 15) -> list[str]: ...

    def attach_console(self) -> str:
        """Relay the console to this terminal; returns why it ended ("detached", ...)."""

    def open_console(self, on_data: Callable[[bytes], None]) -> ConsoleStream:
        """The console for a program (the web dashboard): ON_DATA gets what the guest
        prints, from a thread of its own, and b"" once when the console closed."""


@dataclass(frozen=True)
class Removed:
    """What ``Backend.remove`` kept of a VM: where its disks went, as messages name them."""

    disk: str | None = None  # the root disk; None: removed (or there was none)
    extra_disks: list[str] = field(default_factory=list)

    def described(self, label: str | None) -> str:
        """The details of a ``delete`` event: where the disks went, and on which host."""
        details = f"disk kept at {self.disk}" if self.disk else "disk removed"
        if self.extra_disks:
            details += ", extra disks kept at " + ", ".join(self.extra_disks)
        return details + (f", on {label}" if label else "")


class Backend(Protocol):
    """A hypervisor: where VMs of one kind run. It makes a VM (its disks and its own
    directories, on the host that runs it), takes it away again, and hands out one
    ``Machine`` per VM. The operations never ask which kind it is."""

    label: str | None  # where its VMs run, as messages name it ("hv1"); None: this machine
    address: str  # where its VMs' forwarded ports are reached from this machine

    def machine(self, paths: VMPaths, state: VMState) -> Machine: ...

    def choose_accel(self, requested: str) -> AccelChoice: ...

    def check_config(self, config: VMConfig) -> None:
        """Refuse (InvalidInput) a definition this backend cannot run as given, such as extra
        arguments that clash with its own."""

    def check_base_image(self, path: Path) -> int:
        """Refuse (InvalidInput) a base image that is not safe to lay a disk over; its
        virtual size in MiB, rounded up."""

    def provision(self, config: VMConfig, paths: VMPaths, store: Store) -> None:
        """Make the VM of CONFIG, stopped, in the hidden directory PATHS (renamed into place
        by the caller once this returns): its root disk (empty, an overlay on its base
        image, or holding a formatted file system), its extra disks, its own share
        directories; on a libvirt host also its domain, marked as made by STORE. What a
        killed ``provision`` left, ``remove`` takes away."""

    def remove(self, name: str, paths: VMPaths, store: Store, *, keep_disk: bool) -> Removed:
        """Take away what ``provision`` made for VM NAME, whose directory has been renamed
        away to PATHS: its disks are kept (and where is returned) when KEEP_DISK."""

    def may_run_unrecorded(self, vm_dir: str) -> bool:
        """Whether a VM recorded stopped (its directory VM_DIR) may still run there (cheap:
        ``list`` asks it of every stopped VM, hence a plain string)."""

    def guest_address(self, name: str) -> str | None:
        """The running guest's own IPv4 address (a bridged VM), if the host can tell."""

    def networks(self, ifname: str) -> list[tuple[Network, Address | None]]:
        """Where a guest attached to the host's interface IFNAME (a bridge, a tap) can be:
        the host's addresses there with their prefix (and peer, for a point-to-point link),
        as ``netinfo.parse`` gives them; ClanVMError when the host cannot be asked."""

    def survey(self, timeout: float) -> None:
        """Ask the host once for the state of all its VMs; until ``forget_survey`` its
        machines answer ``alive``, ``ended`` and ``find_running`` from that answer (``list``
        asks each host once, not once per VM). HostUnreachable when it does not answer."""

    def forget_survey(self) -> None: ...
