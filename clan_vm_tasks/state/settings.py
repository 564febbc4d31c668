"""Tool settings: state directory and accelerator, from flags, environment or a YAML file.

Precedence: explicit argument > environment > ``$XDG_CONFIG_HOME/clan-vm/config.yaml``
(or ``$CLAN_VM_CONFIG``) > defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import InvalidInput

ACCELS = ("auto", "kvm", "tcg")
KEYS = {"state_dir", "accel", "allow_qemu_args"}


def _config_file() -> Path:
    explicit = os.environ.get("CLAN_VM_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "clan-vm" / "config.yaml"


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
    allowed = data.get("allow_qemu_args", [])
    if not isinstance(allowed, list) or not all(isinstance(n, str) for n in allowed):
        raise InvalidInput(f"settings file {path}: allow_qemu_args must be a list of VM names")
    return data


def default_state_dir() -> Path:
    explicit = os.environ.get("CLAN_VM_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "clan-vm"


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    accel: str = "auto"
    # VMs whose flake definitions may pass extra arguments to QEMU ("*": every VM).
    allow_qemu_args: tuple[str, ...] = ()

    @classmethod
    def load(cls, state_dir: Path | None = None, accel: str | None = None) -> Settings:
        file = _read_file(_config_file())
        if state_dir is None:
            if os.environ.get("CLAN_VM_STATE_DIR") or "state_dir" not in file:
                state_dir = default_state_dir()
            else:
                state_dir = Path(str(file["state_dir"])).expanduser()
        chosen = accel or os.environ.get("CLAN_VM_ACCEL") or str(file.get("accel", "auto"))
        if chosen not in ACCELS:
            raise InvalidInput(f"unknown accelerator {chosen!r}: use auto, kvm or tcg")
        allowed = tuple(file.get("allow_qemu_args", ()))
        return cls(state_dir=state_dir.absolute(), accel=chosen, allow_qemu_args=allowed)
