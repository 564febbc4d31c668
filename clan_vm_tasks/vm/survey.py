"""``list`` over every VM, wherever it runs: each host is asked once per ``list``, all
hosts in parallel and within LIST_TIMEOUT, so a slow or dead host costs its own time, not
the sum of all; a host that does not answer makes its VMs ``unreachable`` (with the
reason), never stopped, and ``list`` goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clan_vm_tasks.errors import ClanVMError, HostUnreachable
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store, VMState
from clan_vm_tasks.vm import machines, reconcile

if TYPE_CHECKING:
    from clan_vm_tasks.backends.base import Backend

LIST_TIMEOUT = 10.0


def placement(config: Any) -> str | None:
    """The host a stored definition names (None: this machine), read without validating."""
    host = config.get("host") if isinstance(config, dict) else None
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

    return [vm for vm in vms if (placed := placement(vm[2])) is not None and same(placed)]


def _survey_all(backends: dict[str | None, Backend], timeout: float) -> dict[str | None, str]:
    """Ask every host at once; the reason for each host that did not answer in time."""
    failed: dict[str | None, str] = {}
    lock = threading.Lock()

    def ask(host: str | None, backend: Backend) -> None:
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
    """``list``'s rows of VMS (name, record, definition): each host asked once, all at the
    same time; a record checked where it may be untrue."""
    by_host: dict[str | None, list[tuple[str, VMState, dict[str, Any]]]] = {}
    for vm in vms:
        by_host.setdefault(placement(vm[2]), []).append(vm)
    backends: dict[str | None, Backend] = {}
    failed: dict[str | None, str] = {}
    for host in by_host:
        try:
            backends[host] = machines.backend(host, settings)
        except ClanVMError as error:
            failed[host] = str(error)
    failed.update(_survey_all(backends, LIST_TIMEOUT))
    rows = {}
    try:
        for host, members in by_host.items():
            for name, state, config in members:
                try:
                    if host in failed:
                        raise HostUnreachable(str(host), failed[host])
                    backend = backends[host]
                    if reconcile.needs_check(state, backend, f"{store.vms}/{name}"):
                        state = reconcile.current(store, name)
                    row = view(name, state, config)
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
