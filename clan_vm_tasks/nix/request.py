"""What a command asks of a VM that may come from a flake: one value passed from the task
through ``nix.launch`` and ``nix.prepare``, instead of a long list of arguments."""

from __future__ import annotations

from dataclasses import dataclass

from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state.settings import Settings
from clan_vm_tasks.state.store import Store


@dataclass(frozen=True)
class Request:
    store: Store
    settings: Settings
    name: str
    # --flake: a reference; True: the flake around the working directory; None: the flake
    # the VM was created from (a VM made on the command line has none).
    flake: str | bool | None = None
    allow_qemu_args: bool = False  # --allow-qemu-args: the flake's qemuArgs, this once
    allow_shares: bool = False  # --allow-shares: the host directories it shares, this once
    notify: Notify = notice
    # --override-input NAME REF, in order (none: those the VM's flake was last evaluated with)
    overrides: tuple[tuple[str, str], ...] = ()
