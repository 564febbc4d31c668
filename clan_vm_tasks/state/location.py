"""Where the settings file and the state directory are, without reading either: cheap
enough for a shell that completes a VM name on every Tab (only ``os`` is imported)."""

from __future__ import annotations

import os


def settings_file() -> str:
    """``$CLAN_VM_CONFIG``, else ``$XDG_CONFIG_HOME/clan-vm/config.yaml``."""
    explicit = os.environ.get("CLAN_VM_CONFIG")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "clan-vm", "config.yaml")


def state_dir(from_settings: str | None = None) -> str:
    """``$CLAN_VM_STATE_DIR``, else the settings file's ``state_dir`` (FROM_SETTINGS), else
    ``$XDG_STATE_HOME/clan-vm``, else ``~/.local/state/clan-vm``."""
    explicit = os.environ.get("CLAN_VM_STATE_DIR")
    if explicit:
        return explicit
    if from_settings:
        return os.path.expanduser(from_settings)
    home = os.path.expanduser("~")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    return os.path.join(base, "clan-vm")


def runtime_root() -> str:
    """Where sockets live: unix socket paths are limited to 108 bytes. Fixed, not taken from
    $XDG_RUNTIME_DIR: a command run from cron or another login must find the sockets of a VM
    started elsewhere (like tmux's /tmp/tmux-UID)."""
    return f"/tmp/clan-vm-{os.getuid()}"
