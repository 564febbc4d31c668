"""The state directory: one directory per VM, its recorded state, and per-VM locks.

Layout under the state dir (mode 0700)::

    vms/NAME/config.json   the resolved definition (VMConfig)
    vms/NAME/state.json    what we last recorded (VMState); reconciled before use
    vms/NAME/disk.qcow2, console.log (console.log.1: the boot before), qemu.pid, qemu.log,
      events.in and events.out (QEMU's event log of the current boot)
    locks/NAME.lock        serialises commands on one VM, not across VMs
    history.jsonl          append-only event log
    kept-disks/            disks of VMs deleted without --force
    tmp/                   files being written atomically (named after the writer's pid)
    pending/NAME.ACTION    an action on NAME under way (written ahead): if its command
                           dies, the next command records its event or repairs it
    partials/PID.ID.json   a file being written outside the state directory (``copy`` out's
                           partial), locked by its writer: removed by the next command if
                           the writer died (``state.partials``)
    vms/.PURPOSE-NAME-PID  a VM being created or deleted (PURPOSE: creating, deleting,
                           keeping = deleting but keeping the disk)
    vms/NAME/next.json     a changed definition that waits for the VM's next start
    unlisting/NAME         the clans a VM being deleted is to be taken out of (written
                           ahead; finished by the next command if its delete was killed)

Sockets live in a short runtime directory because unix socket paths are limited
to 108 bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import ClanVMError, UnknownVM
from clan_vm_tasks.names import check_name, sha256
from clan_vm_tasks.state import files, location

LOCK_TIMEOUT = 120.0
RECORDED = ("running", "stopped", "paused", "crashed", "starting")
# What list also says: "broken" (a VM whose definition is unusable), "unreachable" (a VM on
# a libvirt host that does not answer).
STATES = (*RECORDED, "broken", "unreachable")


@dataclass
class VMState:
    """What we recorded about a VM. ``status`` is only a claim until reconciled."""

    status: str = "stopped"
    pid: int | None = None
    pid_start: int | None = None  # /proc start time, so a recycled pid is never ours
    accel: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    stopped_at: str | None = None
    stop_step: str | None = None
    console_offset: int = 0  # console.log size when the current boot began
    tap: str | None = None  # a tap device we made for this boot; removed when it ends
    forwards: list[str] = dataclasses.field(default_factory=list)  # as chosen at start
    # The clan directories whose inventory.json lists the VM (absolute): delete takes it out.
    clans: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def from_json(cls, raw: bytes) -> VMState:
        """Parse state.json; anything unreadable becomes a stopped VM (repair, not crash)."""
        try:
            return cls.from_raw(json.loads(raw))
        except ValueError:
            return cls()

    @classmethod
    def from_raw(cls, data: Any) -> VMState:
        """Like from_json, for already parsed JSON."""
        if not isinstance(data, dict):
            return cls()
        state = cls()
        for key, value in data.items():
            expected = _FIELD_TYPES.get(key)
            # bool is not an int here; a list must hold strings only
            if (
                expected is not None
                and type(value) is expected
                and (not isinstance(value, list) or all(isinstance(v, str) for v in value))
            ):
                setattr(state, key, value)
        if state.status not in RECORDED:
            state.status = "stopped"
        return state

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=2).encode() + b"\n"


_INT_FIELDS = ("pid", "pid_start", "console_offset")
_LIST_FIELDS = ("forwards", "clans")
_FIELD_TYPES: dict[str, type] = {
    f.name: int if f.name in _INT_FIELDS else list if f.name in _LIST_FIELDS else str
    for f in dataclasses.fields(VMState)
}


def runtime_root() -> Path:
    """Where sockets live (``location.runtime_root``)."""
    return Path(location.runtime_root())


def owner_id(state_dir: Path) -> str:
    """Which state directory made something on a host (a libvirt domain, GC roots): hosts
    see VMs of many machines and users."""
    import socket  # lazy: only libvirt hosts ask

    return f"{socket.gethostname()}:{state_dir}"


def host_in(root: Path, name: str) -> str | None:
    """The ``host`` of VM NAME's definition in the state directory ROOT, read cheaply."""
    try:
        with open(f"{root}/vms/{name}/config.json", "rb") as f:
            host = json.loads(f.read()).get("host")
    except (OSError, ValueError, AttributeError):
        return None
    return host if isinstance(host, str) else None


class VMPaths:
    """Where one VM's files live; each path is built on first use (``list`` touches two)."""

    def __init__(self, vm_dir: Path) -> None:
        self.dir = vm_dir

    @cached_property
    def run(self) -> Path:
        # One short socket directory per VM directory, so two state dirs never collide.
        digest = sha256(str(self.dir).encode()).hex()[:16]
        return runtime_root() / digest

    @cached_property
    def config(self) -> Path:
        return self.dir / "config.json"

    @cached_property
    def state(self) -> Path:
        return self.dir / "state.json"

    @cached_property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    def extra_disk(self, name: str) -> Path:
        """The image of the extra disk NAME (``extraDisks.NAME``)."""
        return self.dir / f"disk-{name}.qcow2"

    def share_dir(self, tag: str) -> Path:
        """The VM's own directory behind the share TAG when the share names no source."""
        return self.dir / "shares" / tag

    @cached_property
    def spice_socket(self) -> Path:
        """The display of a VM with graphics (SPICE)."""
        return self.run / "spice.sock"

    @cached_property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @cached_property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @cached_property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @cached_property
    def events(self) -> Path:
        """QEMU's QMP event log of the current boot: events.in and events.out."""
        return self.dir / "events"

    @cached_property
    def qmp_socket(self) -> Path:
        return self.run / "qmp.sock"

    @cached_property
    def serial_socket(self) -> Path:
        return self.run / "serial.sock"

    @cached_property
    def agent_pipe(self) -> Path:
        """The guest agent's channel: FIFOs agent.in (to the guest) and agent.out."""
        return self.run / "agent"

    @cached_property
    def agent_fifos(self) -> tuple[Path, Path]:
        """(QEMU reads what goes to the guest, QEMU writes what the guest sent)."""
        return self.run / "agent.in", self.run / "agent.out"

    @cached_property
    def agent_socket(self) -> Path:
        """The guest agent's channel of a VM started by an earlier version."""
        return self.run / "agent.sock"

    @cached_property
    def data_socket(self) -> Path:
        """The data port's socket: its bytes reach a guest command's standard input."""
        return self.run / "data.sock"

    @cached_property
    def channels(self) -> tuple[Path, ...]:
        """What QEMU serves or reads for one run: made anew at a start, removed after it."""
        return (
            self.qmp_socket,
            self.serial_socket,
            self.agent_socket,
            *self.agent_fifos,
            self.data_socket,
        )


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.vms = root / "vms"
        self.history = root / "history.jsonl"
        self.locks = root / "locks"
        self.tmp = root / "tmp"
        self.kept = root / "kept-disks"
        self.pending = root / "pending"
        self.unlisting = root / "unlisting"
        self._paths: dict[str, VMPaths] = {}
        self._tmp_ready = False

    def ensure(self) -> Store:
        for path in (self.root, self.vms, self.locks, self.tmp):
            files.private_dir(path)
        self._tmp_ready = True
        return self

    def write(self, path: Path, data: bytes) -> None:
        """An atomic write of a file in the state directory."""
        if not self._tmp_ready:
            files.private_dir(self.tmp)
            self._tmp_ready = True
        files.atomic_write(path, data, tmp_dir=self.tmp)

    def paths(self, name: str) -> VMPaths:
        cached = self._paths.get(name)
        if cached is None:
            check_name(name)
            cached = self._paths[name] = VMPaths(self.vms / name)
        return cached

    def exists(self, name: str) -> bool:
        return os.path.isfile(f"{self.vms}/{name}/config.json")

    def host_of(self, name: str) -> str | None:
        """The libvirt host a VM's definition places it on (None: this machine)."""
        return host_in(self.root, name)

    def require(self, name: str) -> VMPaths:
        paths = self.paths(name)
        if not paths.config.is_file():
            raise UnknownVM(name, self.names())
        return paths

    def entries(self) -> list[str]:
        """The VM directories' names, sorted; hidden ones (half-created or half-deleted VMs)
        left out. One without a definition is no VM yet: see ``names``."""
        try:
            entries = os.listdir(self.vms)
        except FileNotFoundError:
            return []
        return sorted(e for e in entries if not e.startswith("."))

    def names(self) -> list[str]:
        return [e for e in self.entries() if self.exists(e)]

    def lock_file(self, name: str) -> Path:
        return self.locks / f"{name}.lock"

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        check_name(name)
        files.private_dir(self.locks)
        with files.locked(self.lock_file(name), f"VM '{name}'", timeout):
            try:
                yield
            finally:
                self.drop_lock_file(name)

    def try_lock(self, name: str) -> int | None:
        files.private_dir(self.locks)
        return files.try_lock(self.lock_file(name))

    def drop_lock_file(self, name: str) -> None:
        """Remove the lock file of a VM that does not exist; the caller holds the lock."""
        if not self.exists(name):
            self.lock_file(name).unlink(missing_ok=True)

    def read_state(self, name: str) -> VMState:
        try:
            return VMState.from_json(self.paths(name).state.read_bytes())
        except FileNotFoundError:
            return VMState()

    def write_state(self, name: str, state: VMState) -> None:
        self.write(self.paths(name).state, state.to_json())

    def read_config(self, name: str) -> dict[str, Any]:
        paths = self.require(name)
        try:
            data = json.loads(paths.config.read_bytes())
        except (OSError, ValueError) as error:
            raise ClanVMError(f"its definition {paths.config} is unreadable: {error}") from None
        if not isinstance(data, dict):
            raise ClanVMError(f"its definition {paths.config} is not a JSON object")
        return data

    def begin(self, name: str, action: str, data: bytes) -> None:
        """Write ahead that ACTION of NAME is under way; DATA says how to tell it took effect."""
        files.private_dir(self.pending)
        self.write(self.pending / f"{name}.{action}", data)

    def done(self, name: str, action: str) -> None:
        (self.pending / f"{name}.{action}").unlink(missing_ok=True)

    def pending_work(self) -> list[tuple[str, str, Path]]:
        """(name, action, marker) of every action whose command did not finish it."""
        try:
            entries = os.listdir(self.pending)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            name, dot, action = entry.rpartition(".")
            if dot:
                found.append((name, action, self.pending / entry))
        return found

    def unlisting_work(self) -> bool:
        """Whether a deleted VM is still to be taken out of a clan (a killed delete)."""
        try:
            return bool(os.listdir(self.unlisting))
        except FileNotFoundError:
            return False

    def staging_dir(self, name: str, purpose: str) -> Path:
        """A hidden sibling of the VM directory, for building or tearing one down atomically."""
        return self.vms / f".{purpose}-{name}-{os.getpid()}"

    def keep_disk(self, disk: Path, name: str) -> Path:
        """Move DISK to ``kept-disks/NAME-TIME[-N].qcow2``, never replacing a kept disk.

        A link that fails on an existing name cannot replace anything; the source is
        removed only after the link. Run again after an interruption, it finds the link.
        """
        kept = files.private_dir(self.kept)
        source = os.stat(disk)
        if source.st_nlink > 1:  # linked before an interruption: find that name
            for entry in os.scandir(kept):
                if entry.inode() == source.st_ino:
                    os.unlink(disk)
                    return Path(entry.path)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for number in itertools.count(1):
            target = kept / (
                f"{name}-{stamp}.qcow2" if number == 1 else f"{name}-{stamp}-{number}.qcow2"
            )
            try:
                os.link(disk, target)
                break
            except FileExistsError:
                continue
        files.fsync_dir(kept)
        os.unlink(disk)
        return target
