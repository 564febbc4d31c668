"""Tool settings: state directory, accelerator and libvirt hosts, from flags, environment or
a YAML file.

Precedence: explicit argument > environment > ``$XDG_CONFIG_HOME/clan-vm/config.yaml``
(or ``$CLAN_VM_CONFIG``) > defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.names import host_name_problem, uri_problem
from clan_vm_tasks.state import location

ACCELS = ("auto", "kvm", "tcg")
KEYS = {"state_dir", "accel", "allow_qemu_args", "allow_shares", "hosts"}


def _config_file() -> Path:
    return Path(location.settings_file())


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml  # only paid for by users who have a settings file

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise InvalidInput(f"cannot read settings file {path}: {error}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not set(data) <= KEYS:
        raise InvalidInput(f"settings file {path} may only set {', '.join(sorted(KEYS))}")
    for key in ("allow_qemu_args", "allow_shares"):
        allowed = data.get(key, [])
        if not isinstance(allowed, list) or not all(isinstance(n, str) for n in allowed):
            raise InvalidInput(f"settings file {path}: {key} must be a list of VM names")
    _check_hosts(path, data.get("hosts", {}))
    return data


def _check_hosts(path: Path, hosts: Any) -> None:
    """``hosts:`` maps names to libvirt URIs (the user's own file: a URI may name a program)."""
    if not isinstance(hosts, dict):
        raise InvalidInput(f"settings file {path}: hosts must map names to libvirt URIs")
    for name, uri in hosts.items():
        problem = (
            host_name_problem(name) if isinstance(name, str) else f"{name!r} is not a host name"
        )
        if problem is None:
            if not isinstance(uri, str):
                problem = f"host {name!r} must be a libvirt URI, not {uri!r}"
            else:
                problem = uri_problem(uri, trusted=True)
        if problem:
            raise InvalidInput(f"settings file {path}: hosts: {problem}")


def default_state_dir() -> Path:
    return Path(location.state_dir())


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    accel: str = "auto"
    # VMs whose flake definitions may pass extra arguments to QEMU ("*": every VM).
    allow_qemu_args: tuple[str, ...] = ()
    # VMs whose flake definitions may share host directories with the guest ("*": every VM).
    allow_shares: tuple[str, ...] = ()
    # Libvirt hosts by name (``hosts: {hv1: "qemu+ssh://root@hv1/system"}``).
    hosts: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def load(cls, state_dir: Path | None = None, accel: str | None = None) -> Settings:
        file = _read_file(_config_file())
        if state_dir is None:
            from_file = file.get("state_dir")
            state_dir = Path(location.state_dir(None if from_file is None else str(from_file)))
        chosen = accel or os.environ.get("CLAN_VM_ACCEL") or str(file.get("accel", "auto"))
        if chosen not in ACCELS:
            raise InvalidInput(f"unknown accelerator {chosen!r}: use auto, kvm or tcg")
        allowed = tuple(file.get("allow_qemu_args", ()))
        hosts = dict(file.get("hosts", {}))
        return cls(
            state_dir=state_dir.absolute(),
            accel=chosen,
            allow_qemu_args=allowed,
            allow_shares=tuple(file.get("allow_shares", ())),
            hosts=hosts,
        )
