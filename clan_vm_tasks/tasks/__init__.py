"""The tasks, one module per area, registered in ``common.TASKS`` as they are defined.

``ns`` is invoke's collection of them, for ``invoke`` (the repository's and the
template's ``tasks.py`` use ``Collection.from_module(clan_vm_tasks.tasks)``, which
picks up ``ns``). It is made on first use, so ``clan-vm-manager``, which parses
with the same declarations itself, never imports invoke. Task modules import only
``tasks.common``, never each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clan_vm_tasks.tasks import clan, disks, guest, nix, views, vms, web  # noqa: F401 (registers)
from clan_vm_tasks.tasks.common import TASKS

if TYPE_CHECKING:
    from invoke.collection import Collection


def collection() -> Collection:
    """invoke's collection of every task, from the declarations ``vm_task`` recorded."""
    from invoke.collection import Collection
    from invoke.tasks import task

    made = Collection()
    for spec in TASKS.values():
        made.add_task(
            task(
                auto_shortflags=False,
                name=spec.name,
                positional=None if spec.positional is None else list(spec.positional),
                optional=list(spec.optional),
                iterable=list(spec.iterable),
                help=dict(spec.help),
            )(spec.body)
        )
    return made


def __getattr__(name: str) -> Any:
    if name == "ns":
        made = globals()["ns"] = collection()
        return made
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
