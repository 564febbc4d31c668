"""Running Nix: the right flags per version, evaluation, realisation with GC roots.

Works with Nix 2.8 (Debian) and current Nix. The only difference we depend on is
how a derivation's outputs are named as an installable: Nix 2.8 builds a bare
``/nix/store/…drv``, Nix >= 2.13 wants ``…drv^out`` (and newer Nix means the
``.drv`` file itself by the bare path). Everything else (``--json``,
``--apply``, ``--out-link``, ``--extra-experimental-features``) exists in both.

``CLAN_VM_NIX_LOG=FILE`` appends one line per nix invocation (tests and the
benchmark count evaluations with it). ``CLAN_VM_NIX_OFFLINE=1`` adds
``--option substituters ''`` so an offline machine does not retry the binary cache.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import ClanVMError

FEATURES = ["--extra-experimental-features", "nix-command flakes"]
STORE_DIR = os.environ.get("NIX_STORE_DIR", "/nix/store")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
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


class NixError(ClanVMError):
    """Nix failed; the message is one line."""


def first_error_line(stderr: str) -> str:
    """The line of nix's report that says what went wrong, without trace or code excerpts."""
    lines = [_ANSI.sub("", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and "--show-trace" not in line]
    # Current Nix prints "error:" then a trace of "… while …" and the cause last, itself
    # prefixed "error:"; Nix 2.8 prints the cause first. The last "error:" line is the cause.
    chosen = ""
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            text = line.removeprefix("error:").strip()
            if not text and i + 1 < len(lines) and not lines[i + 1].startswith("…"):
                text = lines[i + 1]
            if text:
                chosen = text
    if not chosen:
        meaningful = [
            line
            for line in lines
            if not line.startswith(("…", "at ", "warning:")) and not re.match(r"^\d+\|", line)
        ]
        chosen = meaningful[-1] if meaningful else "nix failed without a message"
    return chosen if len(chosen) <= 400 else chosen[:397] + "..."


@functools.cache
def version() -> tuple[int, int]:
    try:
        out = subprocess.run(
            ["nix", "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except FileNotFoundError:
        raise ClanVMError("nix is not installed (it is needed to use flakes)") from None
    except (OSError, subprocess.SubprocessError) as error:
        raise ClanVMError(f"cannot run nix --version: {error}") from None
    found = _VERSION.search(out)
    if not found:
        raise ClanVMError(f"cannot read the nix version from {out.strip()!r}")
    return int(found.group(1)), int(found.group(2))


def _options() -> list[str]:
    if os.environ.get("CLAN_VM_NIX_OFFLINE"):
        return ["--option", "substituters", ""]
    return []


def _log(argv: Sequence[str], seconds: float) -> None:
    target = os.environ.get("CLAN_VM_NIX_LOG")
    if target:
        line = json.dumps({"argv": list(argv), "seconds": round(seconds, 3)}) + "\n"
        with open(target, "a", encoding="utf-8") as out:
            out.write(line)


def run(args: Sequence[str], *, what: str, cwd: Path | None = None) -> str:
    """Run ``nix ARGS`` (with the flake features on); stdout, or a one-line NixError."""
    argv = ["nix", *FEATURES, *_options(), *args]
    began = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    except FileNotFoundError:
        raise ClanVMError("nix is not installed (it is needed to use flakes)") from None
    finally:
        _log(argv, time.monotonic() - began)
    if proc.returncode != 0:
        raise NixError(f"{what} failed: {first_error_line(proc.stderr)}")
    return proc.stdout


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise NixError(f"{what}: nix printed no valid JSON") from None


# --- evaluation -------------------------------------------------------------------------------


def attr(*parts: str) -> str:
    """A Nix attribute path, quoting names that are not plain identifiers."""
    return ".".join(
        p if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_'-]*", p) else json.dumps(p) for p in parts
    )


def eval_json(flake: str, path: str, *, apply: str | None = None, what: str) -> Any:
    args = ["eval", "--json", f"{flake}#{path}"]
    if apply:
        args += ["--apply", apply]
    return _json(run(args, what=what), what)


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
        *_options(),
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
        _log(argv, time.monotonic() - began)
    jobs = parse_eval_jobs(proc.stdout.splitlines())
    if proc.returncode != 0 and not jobs:
        raise NixError(f"nix-eval-jobs failed: {first_error_line(proc.stderr)}")
    return jobs


# --- realisation ------------------------------------------------------------------------------


def installable(store_object: str) -> str:
    """How to ask ``nix build`` for a store object: derivations build their outputs."""
    if store_object.endswith(".drv") and version() >= (2, 13):
        return store_object + "^*"
    return store_object


def realise(store_objects: Sequence[str], out_link: Path, *, what: str) -> dict[str, list[str]]:
    """Build or fetch all STORE_OBJECTS in one ``nix build``; roots at OUT_LINK, OUT_LINK-1, ….

    Returns, per requested object, the store paths that now exist (a derivation's outputs).
    """
    if not store_objects:
        return {}
    out_link.parent.mkdir(parents=True, exist_ok=True)
    args = ["build", "--json", "--out-link", str(out_link), *map(installable, store_objects)]
    results = _json(run(args, what=what), what)
    built: dict[str, list[str]] = {}
    for item in results if isinstance(results, list) else []:
        if "drvPath" in item:
            built[item["drvPath"]] = [p for p in (item.get("outputs") or {}).values() if p]
        elif "path" in item:
            built[item["path"]] = [item["path"]]
    missing = [o for o in store_objects if o not in built]
    if missing:
        raise NixError(f"{what}: nix build did not report {', '.join(missing)}")
    return built
