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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clan_vm_tasks import render
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.nix.buildlog import BuildLog

FEATURES = ["--extra-experimental-features", "nix-command flakes"]
STORE_DIR = os.environ.get("NIX_STORE_DIR", "/nix/store")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


class NixError(ClanVMError):
    """Nix failed; the message is one line (and an indented location line when Nix gave one)."""


_LOCATION = re.compile(r"^at (.+:\d+:\d+):?$")
_EXCERPT = re.compile(r"^\d*\s*\|")  # Nix's code excerpt: "5|   a = b.foo;" and "|   ^"
_NOT_MESSAGE = ("…", "at ", "warning:", "(use '--show-trace'", "Did you mean")
MAX_MESSAGE = 600


def _cause(lines: list[str]) -> int | None:
    """Index of the line that says what went wrong. Current Nix prints "error:" then a trace
    of "… while …" and the cause last, itself prefixed "error:"; Nix 2.8 prints the cause
    first. The last "error:" line with text (or followed by text) is the cause."""
    chosen = None
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            text = line.removeprefix("error:").strip()
            if text or (i + 1 < len(lines) and lines[i + 1] and not lines[i + 1].startswith("…")):
                chosen = i
    return chosen


def _clean(stderr: str) -> list[str]:
    lines = [_ANSI.sub("", line).strip() for line in stderr.splitlines()]
    return [line for line in lines if "--show-trace" not in line]


def first_error_line(stderr: str) -> str:
    """What went wrong, as one line: the cause with the lines that continue it (a module
    type error's "Definition values: - In `FILE': VALUE"), without trace or code excerpts."""
    lines = _clean(stderr)
    cause = _cause(lines)
    if cause is None:
        meaningful = [
            line
            for line in lines
            if line and not line.startswith(_NOT_MESSAGE) and not _EXCERPT.match(line)
        ]
        return meaningful[-1] if meaningful else "nix failed without a message"
    parts = [lines[cause].removeprefix("error:").strip()]
    for line in lines[cause + 1 :]:
        if not line:
            if any(parts):
                break  # a blank line ends it (Nix 2.8: before the code excerpt)
            continue
        if line.startswith(_NOT_MESSAGE) or _EXCERPT.match(line):
            break
        parts.append(line)
    text = " ".join(p for p in parts if p)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def error_location(stderr: str) -> str | None:
    """Where the cause is, as FILE:LINE:COLUMN (the first "at" after the cause)."""
    lines = _clean(stderr)
    cause = _cause(lines) or 0
    for line in lines[cause:]:
        found = _LOCATION.match(line)
        if found and not found.group(1).startswith(("«", "/builtin/")):
            return found.group(1)
    return None


def describe_failure(stderr: str) -> str:
    """Nix's report as our error text: one line, and an indented location line if Nix gave one."""
    location = error_location(stderr)
    return first_error_line(stderr) + (f"\n  at {location}" if location else "")


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


def run(
    args: Sequence[str],
    *,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run ``nix ARGS`` (with the flake features on); stdout, or a one-line NixError."""
    argv = ["nix", *FEATURES, *options(), *args]
    began = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd, env=env)
    except FileNotFoundError:
        raise ClanVMError("nix is not installed (it is needed to use flakes)") from None
    finally:
        log_call(argv, time.monotonic() - began)
    if proc.returncode != 0:
        message, _, location = describe_failure(proc.stderr).partition("\n")
        raise NixError(f"{what} failed: {message}{_hint(proc.stderr)}" + _sep(location))
    return proc.stdout


def _sep(location: str) -> str:
    return f"\n{location}" if location else ""


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


def read_only_flags(flake: str) -> list[str]:
    """A flake in the Nix store is read-only: Nix must not try to write its lock file."""
    return ["--no-write-lock-file"] if flake.startswith(STORE_DIR + "/") else []


@dataclass(frozen=True)
class FlakeRef:
    """A flake as Nix is asked about it: its reference, and inputs given another reference
    (``--override-input NAME REF``; Nix then leaves the lock file as it is)."""

    ref: str
    overrides: tuple[tuple[str, str], ...] = ()

    def args(self, path: str) -> list[str]:
        """The arguments naming attribute PATH of the flake."""
        found = [f"{self.ref}#{path}", *read_only_flags(self.ref)]
        for name, ref in self.overrides:
            found += ["--override-input", name, ref]
        return found


def eval_json(flake: FlakeRef | str, path: str, *, apply: str | None = None, what: str) -> Any:
    target = flake if isinstance(flake, FlakeRef) else FlakeRef(flake)
    args = ["eval", "--json", *target.args(path)]
    if apply:
        args += ["--apply", apply]
    return _json(run(args, what=what), what)


# --- realisation ------------------------------------------------------------------------------


def installable(store_object: str) -> str:
    """How to ask ``nix build`` for a store object: derivations build their outputs."""
    if store_object.endswith(".drv") and version() >= (2, 13):
        return store_object + "^*"
    return store_object


def realise(
    store_objects: Sequence[str], out_link: Path, *, what: str, label: str = ""
) -> dict[str, list[str]]:
    """Build or fetch all STORE_OBJECTS in one ``nix build``; roots at OUT_LINK, OUT_LINK-1, ….

    Returns, per requested object, the store paths that now exist (a derivation's outputs).
    The build's progress goes to ``render.progress()`` as it happens.
    """
    if not store_objects:
        return {}
    out_link.parent.mkdir(parents=True, exist_ok=True)
    args = ["build", "--json", "--log-format", "internal-json", "--out-link", str(out_link)]
    progress = render.progress()
    log = BuildLog(progress, label or what)
    progress.phase(f"building {label or what}")
    try:
        code, stdout = _streamed([*args, *map(installable, store_objects)], log.feed)
    finally:
        progress.done()
    if code != 0:
        builders = log.failed_builders()
        if builders is not None:  # what the builder said, not only that it failed
            raise NixError(f"{what} failed: {builders}")
        message, _, location = describe_failure(log.stderr()).partition("\n")
        raise NixError(f"{what} failed: {message}{_hint(log.stderr())}" + _sep(location))
    results = _json(stdout, what)
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


def _streamed(args: Sequence[str], on_line: Callable[[str], None]) -> tuple[int, str]:
    """Run ``nix ARGS``, handing each line of its stderr to ON_LINE as it comes."""
    argv = ["nix", *FEATURES, *options(), *args]
    began = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
        )
    except FileNotFoundError:
        raise ClanVMError("nix is not installed (it is needed to use flakes)") from None
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout else ""))
    reader.start()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            on_line(line.rstrip("\n"))
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        reader.join()
        log_call(argv, time.monotonic() - began)
    return code, "".join(out)
