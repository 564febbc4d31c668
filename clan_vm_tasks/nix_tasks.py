"""The Nix tasks (``eval``, ``build``, ``boot-test``) and the flake hooks of start/list/show.

Imported at the bottom of ``tasks.py`` so the tasks join the collection; the
heavy modules (pydantic, nix) are imported only when a flake is actually used,
so ``list`` without a flake stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke.context import Context
from invoke.exceptions import Exit

from clan_vm_tasks import render
from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.names import check_name
from clan_vm_tasks.tasks import FLAKE_HELP, _notice, _number, _say, _store, vm_task

if TYPE_CHECKING:
    from clan_vm_tasks.flakes import Flake
    from clan_vm_tasks.settings import Settings
    from clan_vm_tasks.store import Store


def _explicit(option: str | bool | None) -> Flake:
    from clan_vm_tasks import flakes

    flake = flakes.resolve(option)
    if flake is None:
        raise InvalidInput("no flake: pass --flake REF, set CLAN_VM_FLAKE, or run inside a flake")
    # A flake found in the working directory counts as chosen for these tasks.
    return flakes.Flake(flake.ref, flake.directory, explicit=True)


# --- hooks for the existing tasks -------------------------------------------------------------


def apply_flake(store: Store, settings: Settings, option: str | None, name: str) -> None:
    """Before ``start NAME``: bring NAME up to date with its flake definition, if it has one."""
    import os

    from clan_vm_tasks import flakes

    # Cheap checks first: no flake anywhere means no nix and no pydantic.
    if not option and not os.environ.get("CLAN_VM_FLAKE") and flakes.find_local(Path.cwd()) is None:
        return
    flake = flakes.resolve(option)
    if flake is None or not flakes.uses_flake(store, flake, name):
        return
    flakes.prepare(store, settings, flake, name, _notice)


def create_from_flake(option: str, name: str) -> None:
    from clan_vm_tasks import flakes

    store, settings = _store()
    existed = store.exists(name)
    config = flakes.prepare(store, settings, _explicit(option), name, _notice)
    assert config is not None
    if existed:
        _say(f"VM '{name}' is up to date with its definition")
    else:
        _say(
            f"created VM '{name}': {config.cpus} cpus, {config.memory} MiB memory, "
            f"{config.disk_size} MiB disk at {store.paths(name).disk}"
        )


def with_declared(
    store: Store, option: str | bool | None, vms: list[dict[str, Any]], state_filter: str | None
) -> list[dict[str, Any]]:
    """list --flake: created VMs marked declared or not, plus declared VMs not created yet."""
    from clan_vm_tasks import flakes

    flake = _explicit(option)
    declared = flakes.declared(store, flake)
    listed = {v["name"] for v in vms}
    rows = [{**v, "declared": v["name"] in declared} for v in vms]
    if state_filter in (None, "not-created"):
        for name, vm in sorted(declared.items()):
            if name in listed or store.exists(name):
                continue
            definition = vm.definition
            network = definition.get("network") or {}
            rows.append(
                {
                    "name": name,
                    "state": "eval-error" if vm.error else "not-created",
                    "pid": None,
                    "cpus": definition.get("cpus"),
                    "memory": definition.get("memory"),
                    "disk_size": definition.get("diskSize"),
                    "network": network.get("mode") if isinstance(network, dict) else None,
                    "forwards": [],
                    "declared": True,
                    "error": vm.error,
                }
            )
    return sorted(rows, key=lambda v: str(v["name"]))


def declared_definition(store: Store, option: str | None, name: str) -> dict[str, Any] | None:
    """show NAME: the flake's definition of NAME, when a flake applies to it."""
    import os

    from clan_vm_tasks import flakes

    if not option and not os.environ.get("CLAN_VM_FLAKE") and flakes.find_local(Path.cwd()) is None:
        return None
    flake = flakes.resolve(option)
    if flake is None or not flakes.uses_flake(store, flake, name):
        return None
    vms = flakes.declared(store, flake)
    if name not in vms:
        if flake.explicit and not store.exists(name):
            flakes.require(vms, flake, name)
        return None
    return flakes.require(vms, flake, name).definition


def describe_declared(name: str, definition: dict[str, Any]) -> str:
    pairs: list[tuple[str, object]] = [("name", name), ("state", "not created (declared)")]
    pairs += [
        (k, render.as_json(v) if isinstance(v, dict | list) else v) for k, v in definition.items()
    ]
    return render.key_values(pairs)


# --- the Nix tasks ----------------------------------------------------------------------------


# Tasks whose VM names may also be given as bare words (clan-vm-manager build web db).
NAMED_TASKS = {
    "eval": ("--flake",),
    "build": ("--flake",),
    "boot-test": ("--flake", "--timeout", "--expect", "--junit"),
}


def expand_names(argv: list[str]) -> list[str]:
    """``TASK a b`` -> ``TASK --vm a --vm b`` (invoke has no variadic positionals)."""
    for i, arg in enumerate(argv):
        if arg in NAMED_TASKS:
            takes_value = NAMED_TASKS[arg]
            out, rest = argv[: i + 1], argv[i + 1 :]
            j = 0
            while j < len(rest):
                word = rest[j]
                if word in takes_value and j + 1 < len(rest):
                    out += [word, rest[j + 1]]
                    j += 2
                    continue
                out += [word] if word.startswith("-") or "=" in word else ["--vm", word]
                j += 1
            return out
        if not arg.startswith("-") and i > 0:
            break
    return argv


def _names(names: list[str] | None) -> list[str]:
    for name in names or []:
        check_name(name)
    return list(names or [])


@vm_task(
    name="eval",
    iterable=["vm"],
    help={"vm": "a VM to show (repeatable; default: all)", "flake": FLAKE_HELP},
)
def eval_(c: Context, vm: list[str] | None = None, flake: str | None = None) -> None:
    """Print the evaluated clanVms definitions of a flake as JSON."""
    from clan_vm_tasks import flakes

    chosen = _names(vm)
    store, _ = _store()
    selected = _explicit(flake)
    vms = flakes.declared(store, selected)
    result = {}
    for name in chosen or sorted(vms):
        found = flakes.require(vms, selected, name)
        flakes.to_config(name, found)  # a wrong type is an error here too
        result[name] = found.definition
    _say(render.as_json(result))


@vm_task(
    iterable=["vm"], help={"vm": "a VM to build (repeatable; default: all)", "flake": FLAKE_HELP}
)
def build(c: Context, vm: list[str] | None = None, flake: str | None = None) -> None:
    """Build the kernels and initrds of declared VMs and print their store paths."""
    from clan_vm_tasks import flakes

    chosen = _names(vm)
    store, _ = _store()
    selected = _explicit(flake)
    vms = flakes.declared(store, selected)
    rows = []
    for name in chosen or sorted(vms):
        found = flakes.require(vms, selected, name)
        flakes.to_config(name, found)
        flakes.realise(store, selected, name, found)
        rows += [[name, field, found.definition[field]] for field in found.installables]
    _say(render.table(["NAME", "FILE", "PATH"], rows))


@vm_task(
    name="boot-test",
    iterable=["vm"],
    help={
        "vm": "a VM to boot (repeatable; default: every declared VM)",
        "flake": FLAKE_HELP,
        "timeout": "seconds each VM gets to show its ready text (default: its bootTest.timeout)",
        "expect": "ready text to wait for (default: each VM's bootTest.expect)",
        "junit": "also write the results as JUnit XML to this file",
    },
)
def boot_test(
    c: Context,
    vm: list[str] | None = None,
    flake: str | None = None,
    timeout: str | None = None,
    expect: str | None = None,
    junit: str | None = None,
) -> None:
    """Build and boot declared VMs in parallel, wait until each is ready, power them off (CI)."""
    from clan_vm_tasks import boot_test as runner
    from clan_vm_tasks import flakes

    chosen = _names(vm)
    seconds = None if timeout is None else _number(timeout, "timeout", 0, float)
    store, settings = _store()
    selected = _explicit(flake)
    results = runner.run(
        store, settings, selected, chosen, expect=expect or None, timeout=seconds, notify=_notice
    )
    if junit:
        runner.junit(results, Path(junit), f"clanVms.{flakes.current_system()}")
    _say(
        render.table(
            ["NAME", "RESULT", "BOOT", "DETAILS"],
            [
                [
                    r.name,
                    "pass" if r.passed else "FAIL",
                    None if r.seconds is None else f"{r.seconds:.1f}s",
                    r.message,
                ]
                for r in results
            ],
        )
    )
    failed = [r.name for r in results if not r.passed]
    if failed:
        raise Exit(f"error: boot test failed for {', '.join(failed)}", code=1)
    if not results:
        raise Exit("error: the flake declares no VMs to boot", code=1)
