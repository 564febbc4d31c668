"""Evaluating ``clanVms``: one ``nix eval`` for every VM with the string contexts that say
what to build, narrowed per VM and per attribute only when it fails; nix-eval-jobs' output
when it is installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from clan_vm_tasks.nix.command import (
    FEATURES,
    STORE_DIR,
    FlakeRef,
    NixError,
    attr,
    eval_json,
    first_error_line,
    log_call,
    options,
)

# Fields of a definition that name files the runner reads itself.
BUILDABLE_FIELDS = ("kernel", "initrd", "baseImage")

# For each VM: the definition as JSON (derivations become their output paths, path literals
# are copied to the store) and, per field, the string context of all of it (append's
# init=TOPLEVEL/init, qemuArgs, shares: every store path the definition refers to), which
# says what to build and keep.
APPLY = (
    "vms: builtins.mapAttrs (name: vm: { definition = vm; context = builtins.mapAttrs"
    " (field: value: builtins.getContext (builtins.toJSON value)) vm; }) vms"
)
_STORE_PATH = re.compile(re.escape(STORE_DIR) + r"/[0-9a-z]{32}-[^/\s\"'=:,;]+")


@dataclass
class Evaluated:
    """One VM as Nix sees it: the definition and the store objects its files need."""

    definition: dict[str, Any] = field(default_factory=dict)
    installables: dict[str, list[str]] = field(default_factory=dict)  # field -> store objects
    error: str | None = None


def needed_store_objects(value: Any, context: dict[str, Any]) -> list[str]:
    """Derivations (``.drv``) and store paths that VALUE (any JSON) depends on: its string
    context; a store path written into a string without context, as it is."""
    objects = sorted(context)
    if not objects:
        text = value if isinstance(value, str) else json.dumps(value)
        objects = sorted(set(_STORE_PATH.findall(text)))
    return objects


def _evaluated(raw: Any, prefix: str) -> Evaluated:
    if not isinstance(raw, dict) or not isinstance(raw.get("definition"), dict):
        return Evaluated(error=f"{prefix}: expected an attribute set")
    definition = raw["definition"]
    contexts = raw.get("context") or {}
    needed = {
        name: needed_store_objects(value, contexts.get(name) or {})
        for name, value in definition.items()
    }
    return Evaluated(definition=definition, installables={k: v for k, v in needed.items() if v})


def evaluate(
    flake: FlakeRef, system: str, known: dict[str, str] | None = None
) -> dict[str, Evaluated]:
    """Every VM of ``clanVms.SYSTEM``; a VM that fails to evaluate carries its error.

    One ``nix eval`` normally; only when it fails is each VM (and then each of the
    failing VM's attributes) evaluated alone, to name what is broken. KNOWN holds
    errors already found per VM (by nix-eval-jobs), which need no narrowing.
    """
    base = attr("clanVms", system)
    try:
        raw = eval_json(flake, base, apply=APPLY, what=f"nix evaluation of {base}")
    except NixError as whole:
        try:
            names = eval_json(flake, base, apply="builtins.attrNames", what="")
        except NixError:
            raise whole from None  # not even the names: nothing narrower to say
        known = known or {}
        failing = _failing(flake, base)
        if failing is None:  # an error tryEval cannot catch: one VM at a time
            failing = [n for n in names if n not in known]
        sound = [n for n in names if n not in failing and n not in known]
        vms = _evaluate_some(flake, base, sound) if sound else {}
        for name in names:
            if name in known:
                vms[name] = Evaluated(error=known[name])
            elif name not in vms:
                vms[name] = _evaluate_one(flake, system, name)
        return {name: vms[name] for name in names}
    if not isinstance(raw, dict):
        raise NixError(f"{base} in {flake.ref} is not an attribute set of VMs")
    vms = {name: _evaluated(value, f"{base}.{name}") for name, value in raw.items()}
    for name, error in (known or {}).items():
        if name in vms:
            vms[name].error = error
    return vms


# Which VMs (or fields of a VM) do not evaluate, in one call; errors that tryEval cannot
# catch (1 + "x") fail the whole call, and the caller goes one by one instead.
_FAILING = (
    "set: builtins.filter (n: !(builtins.tryEval (builtins.toJSON set.${n})).success)"
    " (builtins.attrNames set)"
)


def _failing(flake: FlakeRef, path: str) -> list[str] | None:
    try:
        found = eval_json(flake, path, apply=_FAILING, what="")
    except NixError:
        return None
    return [str(n) for n in found] if isinstance(found, list) else None


def _evaluate_some(flake: FlakeRef, base: str, names: list[str]) -> dict[str, Evaluated]:
    try:
        raw = eval_json(flake, base, apply=f"vms: ({APPLY}) ({_only(names)} vms)", what="")
    except NixError:
        return {}  # evaluated one by one instead
    if not isinstance(raw, dict):
        return {}
    return {name: _evaluated(value, f"{base}.{attr(name)}") for name, value in raw.items()}


def _evaluate_one(flake: FlakeRef, system: str, name: str) -> Evaluated:
    path = attr("clanVms", system, name)
    try:
        raw = eval_json(
            flake,
            attr("clanVms", system),
            apply=f"vms: ({APPLY}) {{ {attr(name)} = vms.{attr(name)}; }}",
            what=f"nix evaluation of {path}",
        )
        return _evaluated(raw.get(name) if isinstance(raw, dict) else None, path)
    except NixError as error:
        return Evaluated(error=_narrow(flake, path, error))


# The attribute the others of a NixOS machine's VM derive from: when it fails, it is named.
_SOURCE = "nixosConfiguration"


def _narrow(flake: FlakeRef, path: str, error: NixError) -> str:
    """Name the first attribute of the VM whose evaluation fails, when one does alone: the
    failing ones found in one call when tryEval can catch the error, else by halving.
    ``nixosConfiguration`` comes first; when several attributes fail for one reason (a NixOS
    configuration whose VM variant is refused), the VM is named, not one of them."""
    fields = _failing(flake, path)
    if fields is not None and len(fields) > 1 and _SOURCE not in fields:
        first, second = (_error_of(flake, f"{path}.{attr(name)}") for name in fields[:2])
        if first is not None and first == second:
            return f"nix evaluation of {path} failed: {first}"
    if fields is None:
        try:
            fields = eval_json(flake, path, apply="builtins.attrNames", what="")
        except NixError:
            return str(error)
    fields = sorted(fields, key=lambda name: name != _SOURCE)
    while len(fields) > 1:  # halving: the first half that fails, else the second
        half = fields[: len(fields) // 2]
        try:
            eval_json(flake, path, apply=f"vm: builtins.toJSON ({_only(half)} vm)", what="")
            fields = fields[len(half) :]
        except NixError:
            fields = half
    for name in fields:
        where = f"{path}.{attr(name)}"
        try:
            eval_json(flake, where, what=f"nix evaluation of {where}")
        except NixError as narrower:
            return str(narrower)
    return str(error)


def _error_of(flake: FlakeRef, where: str) -> str | None:
    """Why WHERE does not evaluate (without naming it), or None when it does."""
    try:
        eval_json(flake, where, what="")
    except NixError as failed:
        return str(failed).removeprefix(" failed: ")
    return None


def _only(names: list[str]) -> str:
    """A Nix function keeping only NAMES of an attribute set."""
    listed = " ".join(json.dumps(n).replace("${", "\\${") for n in names)
    keys = f"builtins.listToAttrs (map (n: {{ name = n; value = null; }}) [ {listed} ])"
    return f"builtins.intersectAttrs ({keys})"


# --- nix-eval-jobs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One line of nix-eval-jobs: a derivation (drv_path, outputs) or an error."""

    attr: str
    attr_path: tuple[str, ...]
    drv_path: str | None = None
    outputs: dict[str, str | None] = field(default_factory=dict)
    name: str | None = None
    system: str | None = None
    error: str | None = None


def parse_eval_jobs(lines: Iterable[str]) -> list[Job]:
    """Parse nix-eval-jobs' JSON lines (``attr``, ``attrPath``, ``drvPath``, ``outputs``,
    ``system``, ``name``, or ``error``)."""
    jobs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise NixError(
                f"nix-eval-jobs printed a line that is not JSON (line {number})"
            ) from None
        if not isinstance(item, dict) or "attr" not in item:
            raise NixError(f"nix-eval-jobs printed an unexpected line {number}")
        attr_path = item.get("attrPath") or str(item["attr"]).split(".")
        error = item.get("error")
        jobs.append(
            Job(
                attr=str(item["attr"]),
                attr_path=tuple(str(p) for p in attr_path),
                drv_path=item.get("drvPath"),
                outputs=dict(item.get("outputs") or {}),
                name=item.get("name"),
                system=item.get("system"),
                error=first_error_line(str(error)) if error is not None else None,
            )
        )
    return jobs


def have_eval_jobs() -> bool:
    return shutil.which("nix-eval-jobs") is not None


def eval_jobs(flake: FlakeRef, system: str) -> list[Job]:
    """The derivations under ``clanVms.SYSTEM``, evaluated by parallel nix-eval-jobs workers."""
    workers = max(1, min(os.cpu_count() or 1, 8))
    argv = [
        "nix-eval-jobs",
        *FEATURES,
        *options(),
        "--force-recurse",
        "--workers",
        str(workers),
        "--flake",
        *flake.args(attr("clanVms", system)),
    ]
    began = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    finally:
        log_call(argv, time.monotonic() - began)
    jobs = parse_eval_jobs(proc.stdout.splitlines())
    if proc.returncode != 0 and not jobs:
        raise NixError(f"nix-eval-jobs failed: {first_error_line(proc.stderr)}")
    return jobs
