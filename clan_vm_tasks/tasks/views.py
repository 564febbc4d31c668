"""The tasks that look without changing anything: list, status, show, console, history."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from clan_vm_tasks import render
from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.names import check_name
from clan_vm_tasks.state.store import STATES
from clan_vm_tasks.tasks.common import (
    FLAKE_HELP,
    NAME_HELP,
    OVERRIDE_INPUT_HELP,
    number,
    open_store,
    overrides,
    say,
    vm_task,
)

if TYPE_CHECKING:
    from invoke.context import Context


def _describe_declared(name: str, definition: dict[str, Any]) -> str:
    pairs: list[tuple[str, object]] = [("name", name), ("state", "not created (declared)")]
    pairs += [
        (k, render.as_json(v) if isinstance(v, dict | list) else v) for k, v in definition.items()
    ]
    return render.key_values(pairs)


@vm_task(
    name="list",
    optional=["flake"],
    examples=["list", "list --filter running --json", "list --flake"],
    iterable=["override_input"],
    pairs=["override_input"],
    help={
        "override_input": OVERRIDE_INPUT_HELP,
        "filter": "only VMs in this state: " + ", ".join(STATES),
        "json": "print a JSON array",
        "flake": "also list the VMs this flake declares (bare --flake: the flake around the cwd)",
        "host": "only the VMs on this libvirt host (a name from the settings file or a URI)",
    },
)
def list_(
    c: Context,
    filter: str | None = None,
    json: bool = False,
    flake: str | bool | None = None,
    host: str | None = None,
    override_input: list[str] | None = None,
) -> None:
    """List VMs with their state, on this machine and on libvirt hosts."""
    from clan_vm_tasks.vm.listing import list_vms

    if filter is not None and filter not in STATES:
        raise InvalidInput(f"unknown state {filter!r}: use one of {', '.join(STATES)}")
    inputs = overrides(override_input)
    store, settings = open_store(create=False)
    vms = list_vms(store, filter, host, settings)
    if flake:  # a read-only command evaluates a flake only when asked to
        from clan_vm_tasks.nix import declared, flakes

        vms = declared.list_rows(store, flakes.chosen(flake, inputs), vms, filter)
    if json:
        say(render.as_json(vms))
        return
    if not vms:
        say(
            "no VMs"
            + (f" in state {filter}" if filter else "")
            + " (create one: clan-vm-manager create NAME)"
        )
        return
    say(
        render.table(
            ["NAME", "HOST", "STATE", "PID", "CPUS", "MEMORY", "NETWORK", "FORWARDS"]
            + (["FLAKE", "EVAL ERROR"] if vms and "declared" in vms[0] else []),
            [
                [
                    v["name"],
                    _host(v.get("host")),
                    f"{v['state']}: {v['error']}" if v.get("error") else v["state"],
                    v["pid"],
                    v["cpus"],
                    None if v["memory"] is None else f"{v['memory']} MiB",
                    v["network"],
                    ", ".join(v["forwards"]) or None,
                    *(_flake_columns(v) if "declared" in v else []),
                ]
                for v in vms
            ],
        )
    )


def _shares(shares: dict[str, Any], directory: str) -> str | None:
    """The shares as "TAG: SOURCE (ro)", a share without a source at the VM's own directory."""
    return (
        ", ".join(
            f"{tag}: {share.get('source') or f'{directory}/shares/{tag}'}"
            + (" (read-only)" if share.get("read_only") else "")
            for tag, share in sorted(shares.items())
        )
        or None
    )


def _flake_columns(vm: dict[str, Any]) -> list[str | None]:
    """list --flake: whether the flake declares the VM, and why its definition does not
    evaluate (the first line: the location line stays in --json)."""
    error = vm.get("eval_error")
    return ["declared" if vm["declared"] else None, error.splitlines()[0] if error else None]


_AGENT = {
    True: ", guest agent answering",
    False: ", no guest agent answering",
    None: ", guest agent busy",  # another command's session holds it
}


def _host(host: str | None) -> str | None:
    return host.split("?", 1)[0] if host else None  # a URI's parameters are noise here


@vm_task(
    help={
        "name": NAME_HELP,
        "json": "print a JSON object",
        "wait_agent": "wait for the guest agent to answer (up to --timeout) before telling",
        "timeout": "seconds --wait-agent waits (default 60)",
    },
    examples=["status web", "status web --json --wait-agent"],
)
def status(
    c: Context, name: str, json: bool = False, wait_agent: bool = False, timeout: str | None = None
) -> None:
    """Show whether a VM runs, and whether its agent answers.

    Show whether a VM runs, checked against its process and QMP, and whether its guest
    agent answers."""
    from clan_vm_tasks.vm.status import status as vm_status

    check_name(name)
    seconds = number(timeout, "timeout", 60, float)
    store, _ = open_store(create=False)
    info = vm_status(store, name, seconds if wait_agent else 0.0)
    where = f", on {_host(info.get('host'))}" if info.get("host") else ""
    agent = _AGENT[info["agent"]] if info["state"] == "running" else ""
    waits = f"; at its next start: {info['pending']['summary']}" if info.get("pending") else ""
    text = f"{name}: {render.state_word(info)}{where}{agent}{waits}"
    say(render.as_json(info) if json else text)


@vm_task(
    iterable=["override_input"],
    pairs=["override_input"],
    examples=["show web", "show web --json"],
    help={
        "name": NAME_HELP,
        "json": "print a JSON object",
        "flake": FLAKE_HELP,
        "override_input": OVERRIDE_INPUT_HELP,
    },
)
def show(
    c: Context,
    name: str,
    json: bool = False,
    flake: str | None = None,
    override_input: list[str] | None = None,
) -> None:
    """Show everything about a VM.

    Show a VM's configuration, paths, process, accelerator, forwards and disks."""
    from clan_vm_tasks.vm.status import show as vm_show

    check_name(name)
    inputs = overrides(override_input)
    store, settings = open_store(create=False)
    declared = None
    if flake:  # a read-only command evaluates a flake only when asked to
        from clan_vm_tasks.nix.declared import definition_for_show

        declared = definition_for_show(store, flake, name, inputs)
    if declared is not None and not store.exists(name):
        say(render.as_json(declared) if json else _describe_declared(name, declared))
        return
    info = vm_show(store, settings, name)
    if declared is not None:
        info["declared"] = declared
    if json:
        say(render.as_json(info))
        return
    config = info["config"]
    say(
        render.key_values(
            [
                ("name", name),
                *([("host", f"{info['uri']} (domain {info['domain']})")] if "uri" in info else []),
                ("state", render.state_word(info)),
                *(
                    [("pending", f"{info['pending']['summary']} (at the next start)")]
                    if info.get("pending")
                    else []
                ),
                ("accel", info["accel"]),
                ("cpus", info["cpus"]),
                ("memory", f"{info['memory']} MiB"),
                *(
                    (
                        "disk",
                        f"{d['path']} ({d['format']}, {d['virtual_size'] or 0} MiB"
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
                ("shares", _shares(config.get("shares") or {}, info["directory"])),
                ("display", info.get("spice_socket") and f"spice+unix://{info['spice_socket']}"),
                ("console log", info["console_log"]),
                ("qmp socket", info["qmp_socket"]),
                ("directory", info["directory"]),
                ("created", info["created_at"]),
            ]
        )
    )


@vm_task(
    help={"name": NAME_HELP, "log": "print the console output so far instead of attaching"},
    examples=["console web", "console web --log"],
)
def console(c: Context, name: str, log: bool = False) -> None:
    """Attach to a VM's serial console.

    Attach to a VM's serial console (Ctrl-] detaches); without a TTY, relay stdin/stdout."""
    from clan_vm_tasks.vm.console import attach_console, console_log

    check_name(name)
    store, _ = open_store(create=False)
    if log:
        sys.stdout.buffer.write(render.for_output(sys.stdout.fileno())(console_log(store, name)))
        sys.stdout.flush()
        return
    why = attach_console(store, name)
    if why == "detached":
        print("\r\ndetached from the console", file=sys.stderr)


@vm_task(
    examples=["history", "history --vm web --limit 10"],
    help={
        "vm": "only events of this VM",
        "limit": "at most this many events",
        "json": "print a JSON array",
    },
)
def history(
    c: Context, vm: str | None = None, limit: str | None = None, json: bool = False
) -> None:
    """Show what happened to VMs, newest first."""
    from dataclasses import asdict

    from clan_vm_tasks.state import history as log

    if vm is not None:
        check_name(vm)
    count = None if limit is None else number(limit, "limit", 0)
    store, _ = open_store(create=False)
    events = log.read(store.history, vm, count)
    if vm is not None and not events and not store.exists(vm):
        from clan_vm_tasks.errors import UnknownVM

        raise UnknownVM(vm)  # a deleted VM still has its events
    if json:
        say(render.as_json([asdict(e) for e in events]))
        return
    if not events:
        say("no history yet")
        return
    say(
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
