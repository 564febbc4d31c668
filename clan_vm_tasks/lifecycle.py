"""The Python API: every task as a function, for scripts and tests written in Python.

    from clan_vm_tasks import lifecycle

    settings = lifecycle.Settings.load()
    store = lifecycle.open_store(settings)
    lifecycle.create(store, lifecycle.VMConfig(name="web", kernel=..., initrd=...))
    lifecycle.start(store, settings, "web", wait_for="READY")

The functions raise ``ClanVMError`` subclasses and print nothing but notices. A
``VMConfig`` is a plain frozen dataclass: ``create`` and ``reconfigure`` validate it with the
schema the command line uses (``InvalidInput`` names each wrong field) before anything is
written.
"""

from __future__ import annotations

from clan_vm_tasks.clan.opening import open_store as opened
from clan_vm_tasks.models import VMConfig
from clan_vm_tasks.state.kept import KeptDisk, list_kept
from clan_vm_tasks.state.kept import remove as remove_kept
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm.console import attach_console, console_log
from clan_vm_tasks.vm.copying import copy_in, copy_out
from clan_vm_tasks.vm.create import create, reconfigure
from clan_vm_tasks.vm.delete import delete
from clan_vm_tasks.vm.edit import Edit, set_vm
from clan_vm_tasks.vm.guest import ExecResult, wait_for_agent
from clan_vm_tasks.vm.guest import execute as _execute
from clan_vm_tasks.vm.listing import list_vms
from clan_vm_tasks.vm.pause import pause, resume
from clan_vm_tasks.vm.resize import resize
from clan_vm_tasks.vm.restart import restart
from clan_vm_tasks.vm.snapshots import delete as delete_snapshot
from clan_vm_tasks.vm.snapshots import list_snapshots, revert
from clan_vm_tasks.vm.snapshots import take as snapshot
from clan_vm_tasks.vm.start import Started, start
from clan_vm_tasks.vm.status import show, status
from clan_vm_tasks.vm.stop import DEFAULT_STOP_TIMEOUT, Stopped, stop

__all__ = [
    "DEFAULT_STOP_TIMEOUT",
    "Edit",
    "ExecResult",
    "KeptDisk",
    "Settings",
    "Started",
    "Stopped",
    "VMConfig",
    "attach_console",
    "console_log",
    "copy_in",
    "copy_out",
    "create",
    "delete",
    "delete_snapshot",
    "exec",
    "list_kept",
    "list_snapshots",
    "list_vms",
    "open_store",
    "pause",
    "reconfigure",
    "remove_kept",
    "resize",
    "restart",
    "resume",
    "revert",
    "set_vm",
    "show",
    "snapshot",
    "start",
    "status",
    "stop",
    "wait_for_agent",
]


def exec(store: Store, name: str, argv: list[str], timeout: float = 60.0) -> ExecResult:
    """Run ARGV in the guest of running VM NAME through its agent (like the NixOS test
    driver's ``machine.execute``): exit code, stdout and stderr."""
    return _execute(store, name, argv, timeout)


def open_store(settings: Settings) -> Store:
    """The state directory SETTINGS name, created (mode 0700) if needed, with what killed
    commands left finished."""
    return opened(settings.state_dir, create=True)
