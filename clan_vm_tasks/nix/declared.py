"""What a flake declares: every VM of ``clanVms.SYSTEM`` (from the evaluation cache when the
flake is unchanged), one of them as a validated ``VMConfig``, and the rows ``list --flake`` adds.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from clan_vm_tasks import render
from clan_vm_tasks.errors import ClanVMError, InvalidInput
from clan_vm_tasks.nix import cache as evalcache
from clan_vm_tasks.nix import command, diagnose, evaluate, flakes
from clan_vm_tasks.nix.flakes import Flake, current_system, where

if TYPE_CHECKING:
    from clan_vm_tasks.models import VMConfig
    from clan_vm_tasks.state.store import Store


def declared(store: Store, flake: Flake) -> dict[str, evaluate.Evaluated]:
    """Every VM the flake declares for this system; from the cache when the flake is unchanged."""
    system = current_system()
    key = evalcache.key(flake.ref, flake.directory, system, flake.target.overrides)
    cached = evalcache.load(store.root, key)
    if cached is not None:
        return {name: evaluate.Evaluated(**value) for name, value in cached.items()}
    known: dict[str, str] = {}
    progress = render.progress()
    progress.phase(f"evaluating clanVms.{system} of {flake.label}")
    try:
        if evaluate.have_eval_jobs():
            for job in evaluate.eval_jobs(flake.target, system):
                if job.error and job.attr_path:
                    path = command.attr("clanVms", system, *job.attr_path)
                    known.setdefault(
                        job.attr_path[0], f"nix evaluation of {path} failed: {job.error}"
                    )
        vms = evaluate.evaluate(flake.target, system, known)
    except command.NixError as error:
        raise command.NixError(diagnose.explain(str(error), flake)) from None
    finally:
        progress.done()
    for vm in vms.values():
        if vm.error:
            vm.error = diagnose.explain(vm.error, flake)
    if not any(vm.error for vm in vms.values()):  # a failure may be transient: never cached
        evalcache.save(store.root, key, {name: asdict(vm) for name, vm in vms.items()})
    return vms


def names_without_network(store: Store, flake: Flake) -> list[str] | None:
    """The names of the VMs FLAKE declares, when they can be told without the network: from
    the evaluation cache, else from an offline evaluation of the names alone. None: its
    inputs must be fetched first, or it does not evaluate."""
    system = current_system()
    cached = evalcache.load(store.root, evalcache.key(flake.ref, flake.directory, system))
    if cached is not None:
        return sorted(cached)
    base = command.attr("clanVms", system)
    args = ["eval", "--offline", "--json", *command.read_only_flags(flake.ref)]
    try:
        found = json.loads(
            command.run([*args, f"{flake.ref}#{base}", "--apply", "builtins.attrNames"], what="")
        )
    except (command.NixError, ValueError):
        return None
    return sorted(n for n in found if isinstance(n, str)) if isinstance(found, list) else None


def require(vms: dict[str, evaluate.Evaluated], flake: Flake, name: str) -> evaluate.Evaluated:
    found = vms.get(name)
    if found is None:
        names = ", ".join(sorted(vms)) or "none"
        raise InvalidInput(
            f"flake {flake.ref} declares no VM '{name}' for {current_system()} (declared: {names})"
        )
    if found.error:
        raise ClanVMError(found.error)
    return found


def to_config(name: str, evaluated: evaluate.Evaluated) -> VMConfig:
    """The definition as a VMConfig; a wrong type names the attribute path, like Nix would."""
    from pydantic import ValidationError

    from clan_vm_tasks import schema
    from clan_vm_tasks.models import VMConfig

    data = dict(evaluated.definition)
    if data.setdefault("name", name) != name:
        raise InvalidInput(f"{where(name)}.name: must be {name!r}, got {data['name']!r}")
    try:
        return schema.converted(VMConfig, schema.VMConfig.model_validate(data))
    except ValidationError as error:
        problems = []
        for item in error.errors():
            path = ".".join([where(name), *(str(p) for p in item["loc"])])
            message = as_attributes(str(item["msg"]).removeprefix("Value error, "))
            got = json.dumps(item.get("input"), default=str)
            problems.append(f"{path}: {message[0].lower()}{message[1:]}, got {got}")
        raise InvalidInput("; ".join(problems)) from None


# What the schema's messages call a command-line flag, as the Nix attribute of a definition.
_FLAGS = {
    "--tap IFNAME": "network.tap",
    "--network user": 'network.mode = "user"',
    "--tap": "network.tap",
    "--bridge": "network.bridge",
    "--initrd": "initrd",
    "--kernel": "kernel",
    "--disk": "diskSize",
    "--mac": "network.mac",
}


def as_attributes(message: str) -> str:
    """A message about a definition from Nix names Nix attributes, not command-line flags."""
    for flag, attribute in _FLAGS.items():
        message = message.replace(flag, attribute)
    return message


def list_rows(
    store: Store, flake: Flake, vms: list[dict[str, Any]], state_filter: str | None
) -> list[dict[str, Any]]:
    """list --flake: created VMs marked declared or not, plus declared VMs not created yet;
    every declared VM whose definition does not evaluate (or is invalid) has ``eval_error``."""
    found = declared(store, flake)
    listed = {v["name"] for v in vms}
    rows = [
        {**v, "declared": v["name"] in found, "eval_error": _problem(v["name"], found)} for v in vms
    ]
    if state_filter in (None, "not-created"):
        for name, vm in sorted(found.items()):
            if name in listed or store.exists(name):
                continue
            definition = vm.definition
            network = definition.get("network") or {}
            problem = _problem(name, found)
            rows.append(
                {
                    "name": name,
                    "state": "eval-error" if problem else "not-created",
                    "pid": None,
                    "cpus": definition.get("cpus"),
                    "memory": definition.get("memory"),
                    "disk_size": definition.get("diskSize"),
                    "network": network.get("mode") if isinstance(network, dict) else None,
                    "forwards": _forwards(network),
                    "declared": True,
                    "error": None,
                    "eval_error": problem,
                }
            )
    return sorted(rows, key=lambda v: str(v["name"]))


def _forwards(network: Any) -> list[str]:
    """The forwards a VM not created yet declares, as ``list`` shows them ("auto" ports are
    chosen when it starts)."""
    from clan_vm_tasks import schema
    from clan_vm_tasks.models import PortForward

    shown = []
    for forward in network.get("forwardPorts") or [] if isinstance(network, dict) else []:
        try:
            shown.append(str(schema.validate(PortForward, forward, "forward")))
        except InvalidInput:
            continue  # the definition's problem is in eval_error
    return shown


def _problem(name: str, found: dict[str, evaluate.Evaluated]) -> str | None:
    """Why NAME's definition is unusable: it does not evaluate, or it is not valid."""
    vm = found.get(name)
    if vm is None:
        return None
    if vm.error:
        return vm.error
    try:
        to_config(name, vm)
    except ClanVMError as error:
        return str(error)
    return None


def definition_for_show(
    store: Store, option: str, name: str, overrides: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any] | None:
    """show NAME --flake REF: the flake's definition of NAME (its inputs OVERRIDES)."""
    flake = flakes.chosen(option, overrides)
    vms = declared(store, flake)
    if name not in vms:
        if flake.explicit and not store.exists(name):
            require(vms, flake, name)
        return None
    return require(vms, flake, name).definition
