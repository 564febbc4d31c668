"""Register clan-vm-tasks VMs as machines in a clan's ``inventory.json``.

clan-cli owns this file and rewrites it wholesale (``json.dump(data, f, indent=2)``, then
``git commit --no-verify -- inventory.json``), so we write exactly the same layout and touch
nothing but the ``machines.<name>`` entries we manage; alternating writes by clan and by us
then only ever show real changes in ``git diff``.

An entry is "ours" when it carries the ``vm`` tag; anything else belongs to the user or to
clan and is only replaced or removed with ``force``.
"""

import json
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clan_vm_tasks.clan.clanfiles import InventoryError, flocked, write_atomic
from clan_vm_tasks.clan.nixstore import in_store
from clan_vm_tasks.errors import InvalidInput

__all__ = [
    "DESCRIPTION",
    "INVENTORY_FILE",
    "LOCK_FILE",
    "VM_TAG",
    "InventoryError",
    "find_clan_dir",
    "has_machine",
    "merge_tags",
    "push",
    "remove",
    "render_inventory",
    "target_host",
]

INVENTORY_FILE = "inventory.json"
# Lives next to inventory.json (not the file itself) because os.replace swaps the inode.
LOCK_FILE = ".inventory.json.lock"
VM_TAG = "vm"
DESCRIPTION = "QEMU VM managed by clan-vm-tasks"
MACHINE_CLASS = "nixos"

# clan machine names end up as Nix attribute names and hostnames: clan-cli's own rule.
_MACHINE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ADDRESS = re.compile(r"[A-Za-z0-9._:-]{1,253}")  # where targetHost reaches the VM's SSH port

JsonObject = dict[str, Any]


class InvalidInventoryInput(InventoryError, InvalidInput):
    """A bad machine name, tag or port given to us (exit code 2, like other bad input)."""


def find_clan_dir(explicit: Path | None, flake_dir: Path | None) -> Path | None:
    """``--clan-dir`` wins, then ``$CLAN_DIR``, then the flake dir if it holds an inventory."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get("CLAN_DIR")
    if from_env:
        return Path(from_env)
    if flake_dir is not None and (flake_dir / INVENTORY_FILE).is_file():
        return flake_dir
    return None


def validate_machine_name(name: str) -> None:
    # fullmatch: "$" would also accept a trailing newline.
    if not isinstance(name, str) or not _MACHINE_NAME.fullmatch(name):
        raise InvalidInventoryInput(
            f"invalid machine name {name!r}: use 1-63 letters, digits and '-',"
            " not starting or ending with '-'"
        )


def validate_tags(tags: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too; iterating it would silently tag each letter.
    if isinstance(tags, str):
        raise InvalidInventoryInput(f"tags must be a list of strings, not the string {tags!r}")
    for tag in tags:
        if not isinstance(tag, str) or not tag or any(ch.isspace() for ch in tag):
            raise InvalidInventoryInput(
                f"invalid tag {tag!r}: tags are non-empty and contain no spaces"
            )
    return list(tags)


def validate_ssh_port(ssh_port: int) -> None:
    # bool is an int subclass; True would otherwise become port 1.
    if isinstance(ssh_port, bool) or not isinstance(ssh_port, int) or not 0 < ssh_port < 65536:
        raise InvalidInventoryInput(f"invalid ssh port {ssh_port!r}: expected 1-65535")


def validate_address(address: str) -> None:
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
        raise InvalidInventoryInput(f"invalid ssh address {address!r}: a host name or IP address")


def merge_tags(existing: Sequence[Any], extra: Sequence[str]) -> list[Any]:
    """``vm`` first, then existing, then extra tags; first occurrence wins."""
    merged: list[Any] = []
    # List membership rather than a set: a hand-edited entry may hold unhashable junk.
    for tag in [VM_TAG, *existing, *extra]:
        if tag not in merged:
            merged.append(tag)
    return merged


def render_inventory(data: JsonObject, *, trailing_newline: bool = False) -> str:
    """clan-cli's exact layout; the trailing newline is kept only if the file had one."""
    return json.dumps(data, indent=2) + ("\n" if trailing_newline else "")


class _DuplicateKeyError(ValueError):
    pass


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> JsonObject:
    # json.loads silently keeps the last duplicate; rewriting would then drop data.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return obj


def parse_inventory(text: str, path: Path) -> JsonObject:
    """Parse and structurally check inventory text; InventoryError if we must not touch it."""
    where = f"{INVENTORY_FILE} at {path}"
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise InventoryError(
            f"{where} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except _DuplicateKeyError as exc:
        raise InventoryError(f"{where} has the key {exc.args[0]!r} twice in one object") from exc
    if not isinstance(data, dict):
        raise InventoryError(f"{where} must contain a JSON object, not {_json_type(data)}")
    machines = data.get("machines", {})
    if not isinstance(machines, dict):
        raise InventoryError(f"{where}: 'machines' must be an object, not {_json_type(machines)}")
    for name, entry in machines.items():
        if not isinstance(entry, dict):
            raise InventoryError(
                f"{where}: machine {name!r} must be an object, not {_json_type(entry)}"
            )
    return data


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _is_ours(entry: JsonObject, name: str, path: Path) -> bool:
    tags = entry.get("tags", [])
    if not isinstance(tags, list):
        raise InventoryError(
            f"machine {name!r} in {path}: 'tags' must be a list, not {_json_type(tags)}"
        )
    return VM_TAG in tags


def _foreign_error(name: str, path: Path) -> InventoryError:
    return InventoryError(
        f"machine {name!r} in {path} is not managed by clan-vm-tasks (no {VM_TAG!r} tag);"
        " use --force to take it over"
    )


def _new_entry(name: str, tags: list[str], ssh_port: int | None, address: str) -> JsonObject:
    entry: JsonObject = {
        "name": name,
        "description": DESCRIPTION,
        "machineClass": MACHINE_CLASS,
        "tags": merge_tags([], tags),
    }
    if ssh_port is not None:
        entry["deploy"] = {"targetHost": target_host(ssh_port, address)}
    return entry


def has_machine(clan_dir: Path, name: str) -> bool:
    """Whether inventory.json in CLAN_DIR lists machine NAME (an unreadable one: no)."""
    try:
        loaded = _load(clan_dir / INVENTORY_FILE)
    except InventoryError:
        return False
    return loaded is not None and name in loaded[0].get("machines", {})


def _check_writable(clan_dir: Path) -> None:
    if in_store(clan_dir):  # the tool never writes there
        raise InventoryError(f"{clan_dir} is in the Nix store (read-only): name your checkout")


def target_host(ssh_port: int, address: str) -> str:
    """``deploy.targetHost``: root at ADDRESS, port SSH_PORT."""
    host = f"[{address}]" if ":" in address else address  # an IPv6 address needs brackets
    return f"root@{host}:{ssh_port}"


def upsert_machine(
    data: JsonObject,
    name: str,
    *,
    ssh_port: int | None,
    tags: list[str],
    force: bool,
    path: Path,
    address: str = "127.0.0.1",
) -> bool:
    """Apply a push to parsed inventory data in place; returns whether the entry existed.

    Existing keys are assigned in place so their position in the file never moves; a new
    machine goes to the end of ``machines``.
    """
    machines: JsonObject = data.setdefault("machines", {})
    entry = machines.get(name)
    if entry is None:
        machines[name] = _new_entry(name, tags, ssh_port, address)
        return False
    if not _is_ours(entry, name, path):
        if not force:
            raise _foreign_error(name, path)
        # Taking over: the old icon/tags/deploy describe a different machine, start fresh.
        machines[name] = _new_entry(name, tags, ssh_port, address)
        return True
    entry["name"] = name
    entry["description"] = DESCRIPTION
    entry["machineClass"] = MACHINE_CLASS
    entry["tags"] = merge_tags(entry.get("tags", []), tags)
    if ssh_port is not None:
        deploy = entry.get("deploy")
        if deploy is None and "deploy" not in entry:
            entry["deploy"] = {"targetHost": target_host(ssh_port, address)}
        elif isinstance(deploy, dict):
            deploy["targetHost"] = target_host(ssh_port, address)  # keeps buildHost, ...
        else:
            raise InventoryError(
                f"machine {name!r} in {path}: 'deploy' must be an object, not {_json_type(deploy)}"
            )
    return True


def _load(path: Path) -> tuple[JsonObject, str] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InventoryError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InventoryError(f"{INVENTORY_FILE} at {path} is not valid UTF-8: {exc}") from exc
    return parse_inventory(text, path), text


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _git(clan_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", "-C", str(clan_dir), *args], check=False, capture_output=True, text=True
        )
    except FileNotFoundError as exc:
        raise InventoryError(f"cannot commit {INVENTORY_FILE}: git is not installed") from exc


def _git_ok(clan_dir: Path, *args: str) -> str:
    result = _git(clan_dir, *args)
    if result.returncode != 0:
        detail = _last_line(result.stderr) or _last_line(result.stdout)
        raise InventoryError(
            f"git {args[0]} of {INVENTORY_FILE} in {clan_dir} failed: "
            f"{detail or f'exit status {result.returncode}'}"
        )
    return result.stdout


def git_dir_of(clan_dir: Path) -> Path:
    """The git dir holding clan_dir; InventoryError if git is missing or this is no repo."""
    return Path(_git_ok(clan_dir, "rev-parse", "--absolute-git-dir").strip())


def commit_inventory(clan_dir: Path, git_dir: Path, message: str) -> None:
    """Commit only inventory.json, the way clan-cli's commit_file does.

    ``--only`` commits the working-tree file without the rest of the index, so whatever the
    user has staged stays staged. ``--no-verify`` as in clan-cli: formatter hooks must not
    reject a machine-written file (hooks it cannot skip, e.g. prepare-commit-msg, still run).
    """
    # clan-cli serialises its own commits on this lock; share it to avoid index.lock races.
    with flocked(git_dir / "clan.lock"):
        # A new file must be known to git for `commit --only`; -N stages no content.
        _git_ok(clan_dir, "add", "--intent-to-add", "--", INVENTORY_FILE)
        if os.environ.get("CLAN_NO_COMMIT"):
            return  # clan's opt-out: make the file visible to flakes, never commit
        if _git(clan_dir, "rev-parse", "--verify", "--quiet", "HEAD").returncode == 0:
            diff = _git(clan_dir, "diff", "--quiet", "HEAD", "--", INVENTORY_FILE)
            if diff.returncode == 0:
                return  # file is back to its committed content; git refuses empty commits
        _git_ok(clan_dir, "commit", "--only", "--no-verify", "-m", message, "--", INVENTORY_FILE)


def _check_clan_dir(clan_dir: Path) -> None:
    if not clan_dir.is_dir():
        raise InventoryError(f"clan directory {clan_dir} does not exist or is not a directory")
    _check_writable(clan_dir)


def push(
    clan_dir: Path,
    name: str,
    *,
    ssh_port: int | None,
    tags: Sequence[str] = (),
    force: bool = False,
    commit: bool = False,
    address: str = "127.0.0.1",
) -> bool:
    """Add or update ``machines[name]`` (reached at ADDRESS); True if the file was written."""
    validate_machine_name(name)
    extra_tags = validate_tags(tags)
    if ssh_port is not None:
        validate_ssh_port(ssh_port)
        validate_address(address)
    _check_clan_dir(clan_dir)
    path = clan_dir / INVENTORY_FILE
    with flocked(clan_dir / LOCK_FILE):
        # Resolved up front so that "not a git repository" fails before anything is written.
        git_dir = git_dir_of(clan_dir) if commit else None
        loaded = _load(path)
        data, old_text = loaded if loaded is not None else ({}, "")
        # A file we create ends with a newline; an existing one keeps its own convention,
        # so alternating writes by clan and by us do not flip it back and forth.
        trailing_newline = loaded is None or old_text.endswith("\n")
        # Compare renderings rather than bytes: a no-op push must not reformat a
        # hand-formatted file.
        before = render_inventory(data, trailing_newline=trailing_newline)
        existed = upsert_machine(
            data, name, ssh_port=ssh_port, tags=extra_tags, force=force, path=path, address=address
        )
        after = render_inventory(data, trailing_newline=trailing_newline)
        if loaded is not None and after == before:
            return False
        write_atomic(path, after)
        if git_dir is not None:
            verb = "update" if existed else "add"
            commit_inventory(clan_dir, git_dir, f"{INVENTORY_FILE}: {verb} machine {name}")
        return True


def remove(clan_dir: Path, name: str, *, force: bool = False, commit: bool = False) -> bool:
    """Delete ``machines[name]`` if it is ours (or ``force``); False if there was nothing."""
    validate_machine_name(name)
    path = clan_dir / INVENTORY_FILE
    # Checked before locking so that removing from a clan without inventory creates nothing.
    if not path.exists():
        return False
    _check_writable(clan_dir)
    with flocked(clan_dir / LOCK_FILE):
        git_dir = git_dir_of(clan_dir) if commit else None
        loaded = _load(path)
        if loaded is None:
            return False
        data, old_text = loaded
        machines = data.get("machines", {})
        if name not in machines:
            return False
        if not _is_ours(machines[name], name, path) and not force:
            raise _foreign_error(name, path)
        del machines[name]
        write_atomic(path, render_inventory(data, trailing_newline=old_text.endswith("\n")))
        if git_dir is not None:
            commit_inventory(clan_dir, git_dir, f"{INVENTORY_FILE}: remove machine {name}")
        return True
