"""VMs declared in a flake: finding the flake, reading ``clanVms``, preparing a VM to boot.

``prepare`` is the whole path from a Nix definition to a VM ready to start:
evaluate (cached), validate against the one schema in ``models``, realise the
kernel and initrd with one ``nix build`` (GC roots under
``STATE/gcroots/NAME``), then create the VM or apply the changed definition.

GC roots live beside the VM directory rather than in it because the VM
directory is created by renaming a staging directory into place; nix registers
an out-link by its absolute path, so a link moved after the build would stop
protecting anything.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clan_vm_tasks import evalcache, fsutil, nix
from clan_vm_tasks.errors import ClanVMError, InvalidInput

if TYPE_CHECKING:
    from clan_vm_tasks.models import VMConfig
    from clan_vm_tasks.settings import Settings
    from clan_vm_tasks.store import Store

Notify = Callable[[str], None]
ORIGIN = "origin.json"  # in STATE/gcroots/NAME: which flake the VM came from, what is rooted


@dataclass(frozen=True)
class Flake:
    ref: str  # as given to nix
    directory: Path | None  # a local flake's directory (cache keys need no nix then)
    explicit: bool  # named by --flake or $CLAN_VM_FLAKE, not found in the working directory


def _local(ref: str) -> Path | None:
    path = ref.removeprefix("path:").removeprefix("git+file://")
    if "?" in path or "#" in path:
        return None
    candidate = Path(path).expanduser()
    if (
        ref.startswith(("path:", "git+file://", "/", ".", "~"))
        or (candidate / "flake.nix").exists()
    ):
        return candidate.absolute() if (candidate / "flake.nix").is_file() else None
    return None


def find_local(start: Path) -> Path | None:
    """The directory of the flake containing START, if any."""
    for directory in (start, *start.parents):
        if (directory / "flake.nix").is_file():
            return directory
    return None


def resolve(option: str | bool | None, *, discover: bool = True) -> Flake | None:
    """--flake REF, else $CLAN_VM_FLAKE, else (when DISCOVER) the flake around the cwd."""
    given = option if isinstance(option, str) and option else os.environ.get("CLAN_VM_FLAKE")
    if given:
        if "#" in given:
            raise InvalidInput(f"--flake takes a flake reference without '#': {given!r}")
        directory = _local(given)
        if directory is None and given.startswith(("/", ".", "~")):
            raise InvalidInput(f"no flake.nix in {given}")
        return Flake(str(directory) if directory else given, directory, explicit=True)
    if not (discover or option is True):
        return None
    directory = find_local(Path.cwd())
    return Flake(str(directory), directory, explicit=False) if directory else None


def current_system() -> str:
    explicit = os.environ.get("CLAN_VM_SYSTEM")
    if explicit:
        return explicit
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    kernel = "darwin" if platform.system() == "Darwin" else "linux"
    return f"{machine or platform.machine()}-{kernel}"


def declared(store: Store, flake: Flake) -> dict[str, nix.Evaluated]:
    """Every VM the flake declares for this system; from the cache when the flake is unchanged."""
    system = current_system()
    key = evalcache.key(flake.ref, flake.directory, system)
    cached = evalcache.load(store.root, key)
    if cached is not None:
        return {name: nix.Evaluated(**value) for name, value in cached.items()}
    known: dict[str, str] = {}
    if nix.have_eval_jobs():
        for job in nix.eval_jobs(flake.ref, system):
            if job.error and job.attr_path:
                where = nix.attr("clanVms", system, *job.attr_path)
                known.setdefault(job.attr_path[0], f"nix evaluation of {where} failed: {job.error}")
    vms = nix.evaluate(flake.ref, system, known)
    if not any(vm.error for vm in vms.values()):  # a failure may be transient: never cached
        evalcache.save(store.root, key, {name: asdict(vm) for name, vm in vms.items()})
    return vms


def where(name: str) -> str:
    return nix.attr("clanVms", current_system(), name)


def require(vms: dict[str, nix.Evaluated], flake: Flake, name: str) -> nix.Evaluated:
    found = vms.get(name)
    if found is None:
        names = ", ".join(sorted(vms)) or "none"
        raise InvalidInput(
            f"flake {flake.ref} declares no VM '{name}' for {current_system()} (declared: {names})"
        )
    if found.error:
        raise ClanVMError(found.error)
    return found


def to_config(name: str, evaluated: nix.Evaluated) -> VMConfig:
    """The definition as a VMConfig; a wrong type names the attribute path, like Nix would."""
    from pydantic import ValidationError

    from clan_vm_tasks.models import VMConfig

    data = dict(evaluated.definition)
    if data.setdefault("name", name) != name:
        raise InvalidInput(f"{where(name)}.name: must be {name!r}, got {data['name']!r}")
    try:
        return VMConfig.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            path = ".".join([where(name), *(str(p) for p in item["loc"])])
            message = str(item["msg"]).removeprefix("Value error, ")
            got = json.dumps(item.get("input"), default=str)
            problems.append(f"{path}: {message[0].lower()}{message[1:]}, got {got}")
        raise InvalidInput("; ".join(problems)) from None


# --- realisation and origin -------------------------------------------------------------------


def roots_dir(store: Store, name: str) -> Path:
    return store.root / "gcroots" / name


def read_origin(store: Store, name: str) -> dict[str, Any]:
    try:
        data = json.loads((roots_dir(store, name) / ORIGIN).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_origin(store: Store, name: str, data: dict[str, Any]) -> None:
    directory = fsutil.private_dir(roots_dir(store, name))
    fsutil.atomic_write(directory / ORIGIN, json.dumps(data, indent=2).encode())


def realise(store: Store, flake: Flake, name: str, evaluated: nix.Evaluated) -> dict[str, Any]:
    """Build what the VM's files need (one nix build), unless its GC roots already hold it."""
    objects = sorted({o for objs in evaluated.installables.values() for o in objs})
    origin = read_origin(store, name)
    rooted: dict[str, list[str]] = origin.get("roots") or {}
    directory = roots_dir(store, name)
    links = sorted(directory.glob("result*"))
    if (
        set(objects) <= set(rooted)
        and all(os.path.exists(p) for o in objects for p in rooted[o])
        and {os.path.realpath(link) for link in links} >= {p for o in objects for p in rooted[o]}
    ):
        built = {o: rooted[o] for o in objects}
    else:
        fsutil.private_dir(directory)
        for link in links:
            link.unlink()
        built = nix.realise(objects, directory / "result", what=f"building {where(name)}")
    for field in nix.BUILDABLE_FIELDS:
        value = evaluated.definition.get(field)
        if isinstance(value, str) and not os.path.exists(value):
            raise ClanVMError(f"{where(name)}.{field}: {value} does not exist after building it")
    data = {"flake": flake.ref, "system": current_system(), "roots": built}
    _write_origin(store, name, data)
    return data


def forget(store: Store, name: str) -> None:
    """Drop the GC roots of a VM that no longer exists."""
    shutil.rmtree(roots_dir(store, name), ignore_errors=True)


def uses_flake(store: Store, flake: Flake, name: str) -> bool:
    """Whether ``start NAME`` should take NAME's definition from FLAKE.

    A flake named explicitly always applies. A flake merely found around the working
    directory does not take over a VM that was created by hand (it has no origin).
    """
    return flake.explicit or not store.exists(name) or bool(read_origin(store, name))


def prepare(
    store: Store, settings: Settings, flake: Flake, name: str, notify: Notify
) -> VMConfig | None:
    """Evaluate, validate, build and create or update VM NAME from FLAKE.

    Returns None (and does nothing) when a discovered flake does not declare an
    existing VM: that VM is then started as it is.
    """
    from clan_vm_tasks import lifecycle
    from clan_vm_tasks.errors import StateConflict

    vms = declared(store, flake)
    if name not in vms and not flake.explicit and store.exists(name):
        return None
    evaluated = require(vms, flake, name)
    config = to_config(name, evaluated)
    realise(store, flake, name, evaluated)
    try:
        if not store.exists(name):
            config = lifecycle.create(store, config)
            notify(f"created VM '{name}' from {flake.ref}")
            return config
    except StateConflict:
        pass  # created concurrently by another command: update it instead
    changed = lifecycle.reconfigure(store, name, config)
    if changed:
        notify(f"applied the changed definition of '{name}': {', '.join(changed)}")
    return config
