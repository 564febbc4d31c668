"""The tasks, one module per area, registered in ``common.TASKS`` as they are defined.

``ns`` is invoke's collection of them, for ``invoke`` (the repository's and the
template's ``tasks.py`` use ``Collection.from_module(clan_vm_tasks.tasks)``, which
picks up ``ns``). It is made on first use, so ``clan-vm-manager``, which parses
with the same declarations itself, never imports invoke. Task modules import only
``tasks.common``, never each other.

A module registers its tasks when it is imported: ``declaration`` imports only the module
of the task asked for (a command pays for its own task's module, not for every one), and
``every_task`` all of them (help, ``--list``, invoke). ``MODULE_OF`` says where each task
is declared; a test holds it to what the modules declare.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from clan_vm_tasks.tasks.common import TASKS, TaskSpec

if TYPE_CHECKING:
    from invoke.collection import Collection


MODULE_OF = {
    **dict.fromkeys(("inventory",), "clan"),
    **dict.fromkeys(("set",), "configure"),
    **dict.fromkeys(("snapshot", "revert", "snapshots", "resize", "kept-disks"), "disks"),
    **dict.fromkeys(("exec", "copy", "ssh"), "guest"),
    **dict.fromkeys(("eval", "build", "boot-test", "switch"), "nix"),
    **dict.fromkeys(("list", "status", "show", "console", "history"), "views"),
    **dict.fromkeys(("create", "start", "stop", "restart", "delete", "pause", "resume"), "vms"),
    **dict.fromkeys(("serve",), "web"),
}
MODULES = tuple(sorted(set(MODULE_OF.values())))


def declaration(name: str) -> TaskSpec | None:
    """The task NAME's declaration, its module imported; None: no such task."""
    module = MODULE_OF.get(name)
    if module is None:
        return None
    importlib.import_module(f"{__name__}.{module}")
    return TASKS.get(name)


def every_task() -> dict[str, TaskSpec]:
    """Every task's declaration, by name (every task module imported)."""
    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return TASKS


def collection() -> Collection:
    """invoke's collection of every task, from the declarations ``vm_task`` recorded."""
    from invoke.collection import Collection
    from invoke.tasks import Task

    class _Task(Task[Callable[..., Any]]):
        """A task whose arguments get only the short flags it names (argument -> letter)."""

        shortflags: Mapping[str, str] = {}

        def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
            opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
            short = self.shortflags.get(name)
            if short is not None and short not in taken_names:
                opts["names"] = [*opts["names"], short]
            return opts

    made = Collection()
    for spec in every_task().values():
        task = _Task(
            spec.body,
            name=spec.name,
            auto_shortflags=False,
            positional=None if spec.positional is None else list(spec.positional),
            optional=list(spec.optional),
            iterable=list(spec.iterable),
            help=dict(spec.help),
        )
        task.shortflags = spec.shortflags
        made.add_task(task)
    return made


def __getattr__(name: str) -> Any:
    if name == "ns":
        made = globals()["ns"] = collection()
        return made
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
