"""What every request of one ``serve`` shares: the settings, the flake it shows, the clan
it keeps in step; and the state directory opened as a command of the CLI opens it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clan_vm_tasks.clan.opening import open_store as opened
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store

if TYPE_CHECKING:
    from clan_vm_tasks.nix.flakes import Flake


@dataclass(frozen=True)
class Context:
    settings: Settings
    flake: Flake | None  # --flake, $CLAN_VM_FLAKE or the flake around serve's directory
    clan_dir: Path | None  # --clan-dir or $CLAN_DIR: the inventory kept in step

    def store(self, *, create: bool = False) -> Store:
        """The state directory with what killed commands left finished, as every command
        of the CLI starts; a read-only request (CREATE false) creates nothing."""
        return opened(self.settings.state_dir, create=create)

    def quick_store(self) -> Store:
        """For the poller, which only lists (``list_vms`` reconciles what it reads)."""
        return Store(self.settings.state_dir)
