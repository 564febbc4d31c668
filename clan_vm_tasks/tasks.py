"""The invoke tasks: thin wrappers that parse options, call lifecycle and print.

They are shared by ``invoke`` (through the repository's tasks.py),
``clan-vm-manager`` and ``python -m clan_vm_tasks``. Numbers arrive as strings
and are checked here, so every entry point reports bad input the same way:
one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from clan_vm_tasks import render
from clan_vm_tasks.errors import ClanVMError, InvalidInput
from clan_vm_tasks.names import check_name
from clan_vm_tasks.settings import Settings
from clan_vm_tasks.store import STATES

if TYPE_CHECKING:
    from clan_vm_tasks.store import Store

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(body: F) -> F:
    """Turn our errors into one ``error:`` line and the right exit code, never a traceback."""

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return body(*args, **kwargs)
        except ClanVMError as error:
            raise Exit(f"error: {error}", code=error.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("error: interrupted", code=130) from None
        except OSError as error:
            raise Exit(f"error: {error}", code=1) from None

    return wrapper  # type: ignore[return-value]


def vm_task(*, name: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """An invoke task with our error handling and no auto-generated short flags."""

    def decorate(body: Callable[..., Any]) -> Any:
        extra = {"name": name} if name else {}
        return task(auto_shortflags=False, **extra, **options)(reports_errors(body))

    return decorate


def _number(value: str | int | float | None, option: str, default: float, kind: type = int) -> Any:
    if value is None:
        return kind(default)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"--{option} must be a number, not {value!r}") from None
    if number <= 0:
        raise InvalidInput(f"--{option} must be positive, not {value}")
    return number


def _store(accel: str | None = None) -> tuple[Store, Settings]:
    from clan_vm_tasks.store import Store

    settings = Settings.load(accel=accel)
    return Store(settings.state_dir).ensure(), settings


def _say(text: str) -> None:
    print(text, flush=True)


def _notice(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


NAME_HELP = "name of the VM"
CLAN_DIR_HELP = "clan directory whose inventory.json lists this VM (default: $CLAN_DIR)"
FLAKE_HELP = "flake declaring clanVms (default: $CLAN_VM_FLAKE, else the flake around the cwd)"
STATE_DIR_NOTE = " State lives in $CLAN_VM_STATE_DIR (default ~/.local/state/clan-vm)."


@vm_task(
    iterable=["qemu_arg", "forward"],
    help={
        "name": NAME_HELP,
        "cpus": "virtual CPUs (default 2)",
        "memory": "memory in MiB (default 2048)",
        "disk": "disk size in MiB (default 20480)",
        "kernel": "kernel image for direct kernel boot",
        "initrd": "initrd for direct kernel boot",
        "append": "kernel command line",
        "network": "user (default), nat (same as user), bridge, tap or none",
        "bridge": "bridge to join with --network bridge (default clan-br0)",
        "tap": "existing tap device to use with --network tap",
        "mac": "MAC address (default: derived from the name)",
        "forward": "forward tcp:HOSTPORT:GUESTPORT (or udp:) from 127.0.0.1; HOSTPORT may be "
        "auto (repeatable)",
        "from_image": "base image: the disk is a copy-on-write overlay on it (never written)",
        "qemu_arg": "extra QEMU argument (repeatable)",
        "machine": "QEMU machine type (default q35)",
        "accel": "auto (default), kvm or tcg",
        "clan_dir": CLAN_DIR_HELP,
        "flake": "create (or update) the VM from this flake's clanVms definition instead",
    },
)
def create(
    c: Context,
    name: str,
    cpus: str | None = None,
    memory: str | None = None,
    disk: str | None = None,
    kernel: str | None = None,
    initrd: str | None = None,
    append: str | None = None,
    network: str = "user",
    bridge: str | None = None,
    tap: str | None = None,
    mac: str | None = None,
    forward: list[str] | None = None,
    qemu_arg: list[str] | None = None,
    machine: str = "q35",
    accel: str = "auto",
    from_image: str | None = None,
    clan_dir: str | None = None,
    flake: str | None = None,
) -> None:
    """Create a VM: validate its definition, make its qcow2 disk, record it stopped."""
    from clan_vm_tasks import inventory_sync, lifecycle
    from clan_vm_tasks.models import PortForward, VMConfig, validate

    check_name(name)
    if flake:
        nix_tasks.create_from_flake(flake, name)
        store, _ = _store()
        inventory_sync.push(store, name, inventory_sync.clan_dir(clan_dir, flake), _notice)
        return
    disk_size = _number(disk, "disk", 20480)
    if from_image and disk is None:
        from pathlib import Path

        from clan_vm_tasks import disks

        base = Path(from_image)
        if not base.is_file():
            raise InvalidInput(f"base image {base} does not exist or is not a file")
        disk_size = disks.size_mib_ceil(base)  # an overlay is as large as its base
    definition = {
        "name": name,
        "cpus": _number(cpus, "cpus", 2),
        "memory": _number(memory, "memory", 2048),
        "disk_size": disk_size,
        "kernel": kernel,
        "initrd": initrd,
        "base_image": from_image,
        "append": append,
        "machine": machine,
        "accel": accel,
        "network": {
            "mode": network,
            "bridge": bridge,
            "tap": tap,
            "mac": mac,
            "forward_ports": [PortForward.parse(f) for f in forward or []],
        },
        "qemu_args": list(qemu_arg or []),
    }
    config = validate(VMConfig, definition, "VM definition")
    store, _ = _store()
    config = lifecycle.create(store, config)
    inventory_sync.push(store, name, inventory_sync.clan_dir(clan_dir), _notice)
    _say(
        f"created VM '{name}': {config.cpus} cpus, {config.memory} MiB memory, "
        f"{config.disk_size} MiB disk at {store.paths(name).disk}"
    )


@vm_task(
    help={
        "name": NAME_HELP,
        "foreground": "run QEMU attached to this command and stream the console",
        "wait_for": "return only after this text appears on the serial console",
        "timeout": "seconds to wait for --wait-for (default 60)",
        "accel": "override the accelerator: kvm or tcg",
        "clan_dir": CLAN_DIR_HELP,
        "flake": FLAKE_HELP,
    }
)
def start(
    c: Context,
    name: str,
    foreground: bool = False,
    wait_for: str | None = None,
    timeout: str | None = None,
    accel: str | None = None,
    clan_dir: str | None = None,
    flake: str | None = None,
) -> None:
    """Start a VM; returns once QEMU answers on QMP (and --wait-for text appeared)."""
    from clan_vm_tasks import inventory_sync, lifecycle

    check_name(name)
    seconds = _number(timeout, "timeout", 60, float)
    store, settings = _store(accel)
    nix_tasks.apply_flake(store, settings, flake, name)
    clan = inventory_sync.clan_dir(clan_dir, flake)
    if foreground:  # start only returns when the VM is gone again
        inventory_sync.push(store, name, clan, _notice)
    started = lifecycle.start(
        store,
        settings,
        name,
        wait_for=wait_for or None,
        timeout=seconds,
        accel=accel,
        foreground=foreground,
    )
    if not foreground:
        inventory_sync.push(store, name, clan, _notice)
        how = (
            f"{wait_for!r} appeared after {started.seconds:.1f}s"
            if wait_for
            else (f"QMP answered after {started.seconds:.1f}s")
        )
        _say(f"started VM '{name}' (pid {started.pid}, {started.accel}): {how}")


@vm_task(
    help={
        "name": NAME_HELP,
        "force": "skip the graceful steps: end QEMU at once",
        "timeout": "seconds the guest gets to power off after the ACPI button (default 30)",
    }
)
def stop(c: Context, name: str, force: bool = False, timeout: str | None = None) -> None:
    """Stop a VM: ACPI power button, then QMP quit, SIGTERM, SIGKILL; says which step ended it."""
    from clan_vm_tasks import lifecycle

    check_name(name)
    seconds = _number(timeout, "timeout", lifecycle.DEFAULT_STOP_TIMEOUT, float)
    store, _ = _store()
    stopped = lifecycle.stop(store, name, force=force, timeout=seconds)
    _say(
        f"stopped VM '{name}' after {stopped.seconds:.1f}s: "
        f"{lifecycle.STEP_WORDS[stopped.step]} ({stopped.step})"
    )


@vm_task(
    help={
        "name": NAME_HELP,
        "timeout": "seconds the guest gets to power off (default 30)",
        "wait_for": "return only after this text appears on the console again",
    }
)
def restart(c: Context, name: str, timeout: str | None = None, wait_for: str | None = None) -> None:
    """Stop a VM gracefully (if running) and start it again."""
    from clan_vm_tasks import lifecycle

    check_name(name)
    seconds = _number(timeout, "timeout", lifecycle.DEFAULT_STOP_TIMEOUT, float)
    store, settings = _store()
    started = lifecycle.restart(store, settings, name, timeout=seconds, wait_for=wait_for or None)
    _say(f"restarted VM '{name}' (pid {started.pid}, {started.accel})")


@vm_task(
    help={
        "name": NAME_HELP,
        "force": "also stop a running VM and remove its disk image",
        "clan_dir": CLAN_DIR_HELP,
    }
)
def delete(c: Context, name: str, force: bool = False, clan_dir: str | None = None) -> None:
    """Delete a VM. Keeps its disk image (and says where) unless --force."""
    from clan_vm_tasks import inventory_sync, lifecycle

    check_name(name)
    store, _ = _store()
    kept = lifecycle.delete(store, name, force=force)
    from clan_vm_tasks import flakes

    flakes.forget(store, name)  # its Nix GC roots, if it came from a flake
    _say(f"deleted VM '{name}'" + (f"; its disk image is kept at {kept}" if kept else ""))
    inventory_sync.forget(name, inventory_sync.clan_dir(clan_dir), _notice)


@vm_task(
    positional=["action", "name"],
    iterable=["tag"],
    help={
        "action": "push or remove",
        "name": NAME_HELP,
        "clan_dir": CLAN_DIR_HELP,
        "tag": "extra clan tag for the machine (repeatable; 'vm' is always set)",
        "force": "take over (push) or remove a machine entry that is not ours",
        "commit": "commit inventory.json in its git repository, like clan-cli does",
    },
)
def inventory(
    c: Context,
    action: str,
    name: str,
    clan_dir: str | None = None,
    tag: list[str] | None = None,
    force: bool = False,
    commit: bool = False,
) -> None:
    """Add a VM to the clan's inventory.json as a machine (push), or take it out (remove)."""
    from clan_vm_tasks import inventory as inv
    from clan_vm_tasks import inventory_sync

    check_name(name)
    directory = inventory_sync.clan_dir(clan_dir)
    if directory is None:
        raise InvalidInput("no clan directory: pass --clan-dir DIR or set CLAN_DIR")
    path = directory / inv.INVENTORY_FILE
    if action == "push":
        store, _ = _store()
        store.require(name)
        port = inventory_sync.ssh_port(store, name)
        changed = inv.push(
            directory, name, ssh_port=port, tags=tag or [], force=force, commit=commit
        )
        _say(f"{'updated' if changed else 'unchanged:'} machine '{name}' in {path}")
    elif action == "remove":
        changed = inv.remove(directory, name, force=force, commit=commit)
        _say(f"{'removed' if changed else 'nothing to remove:'} machine '{name}' from {path}")
    else:
        raise InvalidInput(f"unknown inventory action {action!r}: use push or remove")


@vm_task(
    name="list",
    optional=["flake"],
    help={
        "filter": "only VMs in this state: " + ", ".join(STATES),
        "json": "print a JSON array",
        "flake": "also list the VMs this flake declares (bare --flake: the flake around the cwd)",
    },
)
def list_(
    c: Context, filter: str | None = None, json: bool = False, flake: str | bool | None = None
) -> None:
    """List VMs with their state."""
    from clan_vm_tasks import overview

    if filter is not None and filter not in STATES:
        raise InvalidInput(f"unknown state {filter!r}: use one of {', '.join(STATES)}")
    store, _ = _store()
    vms = overview.list_vms(store, filter)
    if flake or os.environ.get("CLAN_VM_FLAKE"):
        vms = nix_tasks.with_declared(store, flake, vms, filter)
    if json:
        _say(render.as_json(vms))
        return
    if not vms:
        _say(
            "no VMs"
            + (f" in state {filter}" if filter else "")
            + " (create one: clan-vm-manager create NAME)"
        )
        return
    _say(
        render.table(
            ["NAME", "STATE", "PID", "CPUS", "MEMORY", "NETWORK", "FORWARDS"]
            + (["FLAKE"] if vms and "declared" in vms[0] else []),
            [
                [
                    v["name"],
                    v["state"],
                    v["pid"],
                    v["cpus"],
                    f"{v['memory']} MiB",
                    v["network"],
                    ", ".join(v["forwards"]) or None,
                    *(["declared" if v["declared"] else None] if "declared" in v else []),
                ]
                for v in vms
            ],
        )
    )


@vm_task(help={"name": NAME_HELP, "json": "print a JSON object"})
def status(c: Context, name: str, json: bool = False) -> None:
    """Show whether a VM runs, checked against its process and QMP."""
    from clan_vm_tasks import lifecycle

    check_name(name)
    store, _ = _store()
    info = lifecycle.status(store, name)
    _say(render.as_json(info) if json else f"{name}: {render.state_word(info)}")


@vm_task(help={"name": NAME_HELP, "json": "print a JSON object", "flake": FLAKE_HELP})
def show(c: Context, name: str, json: bool = False, flake: str | None = None) -> None:
    """Show a VM's configuration, paths, process, accelerator, forwards and disks."""
    from clan_vm_tasks import lifecycle

    check_name(name)
    store, settings = _store()
    declared = nix_tasks.declared_definition(store, flake, name)
    if declared is not None and not store.exists(name):
        _say(render.as_json(declared) if json else nix_tasks.describe_declared(name, declared))
        return
    info = lifecycle.show(store, settings, name)
    if declared is not None:
        info["declared"] = declared
    if json:
        _say(render.as_json(info))
        return
    config = info["config"]
    _say(
        render.key_values(
            [
                ("name", name),
                ("state", render.state_word(info)),
                ("accel", info["accel"]),
                ("cpus", info["cpus"]),
                ("memory", f"{info['memory']} MiB"),
                *(
                    (
                        "disk",
                        f"{d['path']} ({d['format']}, {(d['virtual_size'] or 0) >> 20} MiB"
                        + (f", backing file {d['backing_file']}" if d["backing_file"] else "")
                        + ")",
                    )
                    for d in info["disks"]
                ),
                ("kernel", config["kernel"]),
                ("initrd", config["initrd"]),
                ("append", config["append"]),
                ("machine", config["machine"]),
                ("network", f"{info['network']}, mac {info['mac']}"),
                ("forwards", ", ".join(info["forwards"]) or None),
                ("qemu args", " ".join(config["qemu_args"]) or None),
                ("console log", info["console_log"]),
                ("qmp socket", info["qmp_socket"]),
                ("directory", info["directory"]),
                ("created", info["created_at"]),
            ]
        )
    )


@vm_task(help={"name": NAME_HELP, "log": "print the console output so far instead of attaching"})
def console(c: Context, name: str, log: bool = False) -> None:
    """Attach to a VM's serial console (Ctrl-] detaches); without a TTY, relay stdin/stdout."""
    from clan_vm_tasks import lifecycle

    check_name(name)
    store, _ = _store()
    if log:
        sys.stdout.buffer.write(lifecycle.console_log(store, name))
        sys.stdout.flush()
        return
    why = lifecycle.attach_console(store, name)
    if why == "detached":
        print("\r\ndetached from the console", file=sys.stderr)


@vm_task(
    help={
        "vm": "only events of this VM",
        "limit": "at most this many events",
        "json": "print a JSON array",
    }
)
def history(
    c: Context, vm: str | None = None, limit: str | None = None, json: bool = False
) -> None:
    """Show what happened to VMs, newest first."""
    from dataclasses import asdict

    from clan_vm_tasks import history as log

    if vm is not None:
        check_name(vm)
    count = None if limit is None else _number(limit, "limit", 0)
    store, _ = _store()
    events = log.read(store.history, vm, count)
    if json:
        _say(render.as_json([asdict(e) for e in events]))
        return
    if not events:
        _say("no history yet")
        return
    _say(
        render.table(
            ["TIME", "VM", "ACTION", "USER", "DETAILS"],
            [
                [
                    e.timestamp,
                    e.vm,
                    e.action + (" (failed)" if e.result != "ok" else ""),
                    e.user,
                    e.details,
                ]
                for e in events
            ],
        )
    )


# Tasks defined in their own modules join the collection by being imported here.
from clan_vm_tasks import nix_tasks  # noqa: E402
from clan_vm_tasks.nix_tasks import boot_test, build, eval_  # noqa: E402
from clan_vm_tasks.tasks_more import pause, resize, resume, revert, snapshot, snapshots  # noqa: E402

__all__ = [
    "boot_test",
    "build",
    "eval_",
    "pause",
    "resize",
    "resume",
    "revert",
    "snapshot",
    "snapshots",
]
