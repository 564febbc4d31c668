"""VMs on libvirt hosts: making and taking them away there, finishing what a killed
command left there, and asking every host about its VMs at once for ``list``.

A host is asked once per ``list``, all hosts in parallel and within LIST_TIMEOUT, so a
slow or dead host costs its own time, not the sum of all; a host that does not answer
makes its VMs ``unreachable`` (with the reason), never stopped, and ``list`` goes on.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clan_vm_tasks.backends.base import HostedBackend, HostUnreachable
from clan_vm_tasks.errors import ClanVMError, StateConflict
from clan_vm_tasks.render import Notify
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store, VMState
from clan_vm_tasks.vm import machines, reconcile

if TYPE_CHECKING:
    from pathlib import Path

    from clan_vm_tasks.models import VMConfig

LIST_TIMEOUT = 10.0
_STAGING = re.compile(r"\.(creating|deleting|keeping)-(.+)-(\d+)")


def place(store: Store, config: VMConfig, scratch: Path) -> None:
    """Make CONFIG's VM on its host; on failure take back what was made there."""
    assert config.host is not None
    backend = machines.hosted(config.host)
    try:
        backend.place(config, store.root, scratch)
    except StateConflict:
        raise  # refused before anything was made
    except BaseException:
        with contextlib.suppress(ClanVMError):
            backend.remove(config.name, store.root, keep_disk=False)
        raise


def finish_leftovers(store: Store, warn: Notify) -> None:
    """Before ``sweep`` clears a hidden directory of a killed create or delete of a VM on a
    libvirt host, take away what that command made or left on the host (the disk stays
    when the delete was to keep it)."""
    try:
        entries = os.listdir(store.vms)
    except FileNotFoundError:
        return
    for entry in entries:
        found = _STAGING.fullmatch(entry)
        if found is None:
            continue
        purpose, name = found.group(1), found.group(2)
        host = _host_of(store, entry)
        if host is None or store.exists(name):  # local, or the name was made again since
            continue
        fd = store.try_lock(name)
        if fd is None:
            continue  # its command is still at work
        try:
            machines.hosted(host).remove(name, store.root, keep_disk=purpose == "keeping")
        except ClanVMError as error:
            warn(
                f"warning: an interrupted {'create' if purpose == 'creating' else 'delete'} "
                f"of '{name}' may have left its domain and volumes on host "
                f"{machines.where(host)}: {error}"
            )
        finally:
            os.close(fd)


def _host_of(store: Store, entry: str) -> str | None:
    import json

    try:
        host = json.loads((store.vms / entry / "config.json").read_bytes()).get("host")
    except (OSError, ValueError, AttributeError):
        return None
    return host if isinstance(host, str) else None


def placed_on(
    vms: list[tuple[str, VMState, dict[str, Any]]], host: str, settings: Settings | None
) -> list[tuple[str, VMState, dict[str, Any]]]:
    """The VMs on HOST, named as the VM names it or by the URI it stands for."""
    wanted = machines.resolve(host, settings)

    def same(placed: str) -> bool:
        if placed == host:
            return True
        try:
            return machines.resolve(placed, settings) == wanted
        except ClanVMError:
            return False

    return [vm for vm in vms if same(str(vm[2]["host"]))]


def _survey_all(backends: dict[str, HostedBackend], timeout: float) -> dict[str, str]:
    """Ask every host at once; the reason for each host that did not answer in time."""
    failed: dict[str, str] = {}
    lock = threading.Lock()

    def ask(host: str, backend: HostedBackend) -> None:
        try:
            backend.survey(timeout)
        except Exception as error:  # whatever it is, this host's VMs are not known
            with lock:
                failed[host] = getattr(error, "reason", str(error))

    threads = {
        host: threading.Thread(target=ask, args=(host, backend), daemon=True)
        for host, backend in backends.items()
    }
    deadline = time.monotonic() + timeout
    for thread in threads.values():
        thread.start()
    for host, thread in threads.items():
        thread.join(max(0.0, deadline - time.monotonic()))  # TIMEOUT at most, in all
        if thread.is_alive():
            with lock:
                failed.setdefault(host, f"no answer within {timeout:g}s")
    return failed


def list_rows(
    store: Store,
    vms: list[tuple[str, VMState, dict[str, Any]]],
    view: Callable[[str, VMState, Any], dict[str, Any]],
    settings: Settings | None = None,
) -> dict[str, dict[str, Any]]:
    """``list``'s rows of VMS (name, record, definition), all on libvirt hosts."""
    by_host: dict[str, list[tuple[str, VMState, dict[str, Any]]]] = {}
    for vm in vms:
        by_host.setdefault(str(vm[2]["host"]), []).append(vm)
    backends: dict[str, HostedBackend] = {}
    failed: dict[str, str] = {}
    for host in by_host:
        try:
            backends[host] = machines.hosted(host, settings)
        except ClanVMError as error:
            failed[host] = str(error)
    failed.update(_survey_all(backends, LIST_TIMEOUT))
    rows = {}
    try:
        for host, members in by_host.items():
            for name, state, config in members:
                try:
                    if host in failed:
                        raise HostUnreachable(host, failed[host])
                    row = view(name, reconcile.current(store, name), config)
                except HostUnreachable as error:  # before or during this list
                    row = view(name, state, config)
                    row.update(state="unreachable", error=error.reason, pid=None)
                if host in backends and row["started_at"] is None:  # forwards as defined
                    there = f":{backends[host].address}:"
                    row["forwards"] = [f.replace(":127.0.0.1:", there, 1) for f in row["forwards"]]
                rows[name] = row
    finally:
        for backend in backends.values():
            backend.forget_survey()
    return rows
