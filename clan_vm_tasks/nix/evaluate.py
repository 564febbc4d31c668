"""Evaluating ``clanVms``: one ``nix eval`` for every VM with the string contexts that say
what to build, narrowed per VM and per attribute only when it fails; nix-eval-jobs' output
when it is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from clan_vm_tasks.nix.command import (
    FEATURES,
    STORE_DIR,
    NixError,
    attr,
    eval_json,
    first_error_line,
    log_call,
    options,
)

# Fields of a definition that name files the runner needs built.
BUILDABLE_FIELDS = ("kernel", "initrd", "baseImage")

# For each VM: the definition as JSON (derivations become their output paths, unbuilt)
# and the string context of each buildable field, which says what to build.
APPLY = (
    "vms: builtins.mapAttrs (name: vm: { definition = vm; context = builtins.listToAttrs"
    " (map (f: { name = f; value = builtins.getContext (toString vm.${f}); })"
    " (builtins.filter (f: vm ? ${f} && vm.${f} != null) [ "
    + " ".join(f'"{f}"' for f in BUILDABLE_FIELDS)
    + " ])); }) vms"
)


@dataclass
class Evaluated:
    """One VM as Nix sees it: the definition and the store objects its files need."""

    definition: dict[str, Any] = field(default_factory=dict)
    installables: dict[str, list[str]] = field(default_factory=dict)  # field -> store objects
    error: str | None = None


def needed_store_objects(value: Any, context: dict[str, Any]) -> list[str]:
    """Derivations (``.drv``) and store paths the string VALUE depends on.

    A path literal inside the flake (``./vmlinuz``) has no context but lives in the
    flake's source in the store, which then must be kept alive too.
    """
    objects = sorted(context)
    if not objects and isinstance(value, str) and value.startswith(STORE_DIR + "/"):
        top = value[len(STORE_DIR) + 1 :].split("/", 1)[0]
        objects = [f"{STORE_DIR}/{top}"]
    return objects


def _evaluated(raw: Any, prefix: str) -> Evaluated:
    if not isinstance(raw, dict) or not isinstance(raw.get("definition"), dict):
        return Evaluated(error=f"{prefix}: expected an attribute set")
    definition = raw["definition"]
    contexts = raw.get("context") or {}
    return Evaluated(
        definition=definition,
        installables={
            name: needed_store_objects(definition.get(name), contexts.get(name) or {})
            for name in BUILDABLE_FIELDS
            if definition.get(name) is not None
        },
    )


def evaluate(flake: str, system: str, known: dict[str, str] | None = None) -> dict[str, Evaluated]:
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
        return {
            name: Evaluated(error=known[name])
            if name in known
            else _evaluate_one(flake, system, name)
            for name in names
        }
    if not isinstance(raw, dict):
        raise NixError(f"{base} in {flake} is not an attribute set of VMs")
    vms = {name: _evaluated(value, f"{base}.{name}") for name, value in raw.items()}
    for name, error in (known or {}).items():
        if name in vms:
            vms[name].error = error
    return vms


def _evaluate_one(flake: str, system: str, name: str) -> Evaluated:
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


def _narrow(flake: str, path: str, error: NixError) -> str:
    """Name the first attribute of the VM whose evaluation fails, when one does alone."""
    try:
        fields = eval_json(flake, path, apply="builtins.attrNames", what="")
    except NixError:
        return str(error)
    for name in fields:
        where = f"{path}.{attr(name)}"
        try:
            eval_json(flake, where, what=f"nix evaluation of {where}")
        except NixError as narrower:
            return str(narrower)
    return str(error)


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


def eval_jobs(flake: str, system: str) -> list[Job]:
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
        f"{flake}#{attr('clanVms', system)}",
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
