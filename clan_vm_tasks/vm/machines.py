"""Which backend runs a VM, and the ``Machine`` that stands for it.

A VM whose definition names a ``host`` runs on that libvirt host (a name from the
settings file's ``hosts:``, or a libvirt URI); every other VM on the local QEMU
backend. This is the one place that chooses; the libvirt backend is imported only
when a VM needs it, so nothing about local VMs pays for it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from clan_vm_tasks.backends.qemu.backend import QemuBackend
from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.names import host_name_problem, uri_problem
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store, VMState

if TYPE_CHECKING:
    from clan_vm_tasks.backends.base import Backend, Machine

_LOCAL: Backend = QemuBackend()
_HOSTED: dict[tuple[str, str], Backend] = {}
_SETTINGS: dict[tuple[str | None, ...], Settings] = {}


def _settings() -> Settings:
    """The settings file, read once per process and environment (``list`` asks for every VM)."""
    key = tuple(os.environ.get(v) for v in ("CLAN_VM_CONFIG", "XDG_CONFIG_HOME", "HOME"))
    if key not in _SETTINGS:
        _SETTINGS[key] = Settings.load()
    return _SETTINGS[key]


def backend(host: str | None = None, settings: Settings | None = None) -> Backend:
    """The backend of a VM whose definition names HOST (None: this machine)."""
    return _LOCAL if host is None else _hosted(host, settings)


def backend_of(store: Store, name: str) -> Backend:
    """The backend of VM NAME, from its definition (read cheaply, without validating it)."""
    return backend(store.host_of(name))


def resolve(host: str, settings: Settings | None = None) -> str:
    """The libvirt URI HOST stands for: HOST itself, or its entry in the settings file."""
    if "://" in host:
        problem = uri_problem(host, trusted=False)
        if problem:
            raise InvalidInput(problem)
        return host
    problem = host_name_problem(host)
    if problem:
        raise InvalidInput(problem)
    uri = (settings or _settings()).hosts.get(host)
    if uri is None:
        raise InvalidInput(
            f"unknown host '{host}': name it in the settings file (hosts: {{{host}: "
            f"qemu+ssh://USER@HOST/system}}) or give a libvirt URI"
        )
    return uri


def _hosted(host: str, settings: Settings | None = None) -> Backend:
    uri = resolve(host, settings)
    found = _HOSTED.get((host, uri))
    if found is None:
        from clan_vm_tasks.backends.libvirt.backend import LibvirtBackend

        found = _HOSTED[(host, uri)] = LibvirtBackend(host, uri)
    return found


def where(host: str) -> str:
    """HOST as messages and history name it: a settings name, or a URI without parameters."""
    return host.split("?", 1)[0]


def machine(store: Store, name: str, state: VMState) -> Machine:
    return backend_of(store, name).machine(store.paths(name), state)
