"""Running Nix: the right flags per version, one-line errors, building with GC roots.

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
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clan_vm_tasks.errors import ClanVMError

FEATURES = ["--extra-experimental-features", "nix-command flakes"]
STORE_DIR = os.environ.get("NIX_STORE_DIR", "/nix/store")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


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


def options() -> list[str]:
    if os.environ.get("CLAN_VM_NIX_OFFLINE"):
        return ["--option", "substituters", ""]
    return []


def log_call(argv: Sequence[str], seconds: float) -> None:
    target = os.environ.get("CLAN_VM_NIX_LOG")
    if target:
        line = json.dumps({"argv": list(argv), "seconds": round(seconds, 3)}) + "\n"
        with open(target, "a", encoding="utf-8") as out:
            out.write(line)


def run(args: Sequence[str], *, what: str, cwd: Path | None = None) -> str:
    """Run ``nix ARGS`` (with the flake features on); stdout, or a one-line NixError."""
    argv = ["nix", *FEATURES, *options(), *args]
    began = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    except FileNotFoundError:
        raise ClanVMError("nix is not installed (it is needed to use flakes)") from None
    finally:
        log_call(argv, time.monotonic() - began)
    if proc.returncode != 0:
        raise NixError(f"{what} failed: {first_error_line(proc.stderr)}{_hint(proc.stderr)}")
    return proc.stdout


def _hint(stderr: str) -> str:
    """What to do about a Nix that is installed but not set up."""
    if "build-users-group" in stderr and "does not exist" in stderr:
        return (
            "; Nix has no build users: set them up (Debian: apt install nix-setup-systemd, "
            "or ./scripts/setup of clan-vm-tasks)"
        )
    return ""


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise NixError(f"{what}: nix printed no valid JSON") from None


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
