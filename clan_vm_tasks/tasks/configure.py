"""The task that changes a VM made on the command line: ``set``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.names import check_name
from clan_vm_tasks.render import notice
from clan_vm_tasks.tasks.common import NAME_HELP, number, on_host, open_store, say, vm_task

if TYPE_CHECKING:
    from invoke.context import Context

NETWORK_MODES = ("user", "nat", "bridge", "tap", "none")


@vm_task(
    name="set",
    iterable=["forward", "no_forward"],
    examples=["set web --cpus 4 --memory 4096", "set web --no-forward 2222 --forward tcp:2222:80"],
    help={
        "name": NAME_HELP,
        "cpus": "virtual CPUs",
        "memory": "memory in MiB",
        "disk": "disk size in MiB (only growing is allowed)",
        "append": "kernel command line ('' removes it)",
        "network": "user, nat (same as user), bridge, tap or none",
        "bridge": "bridge to join with --network bridge (default clan-br0)",
        "tap": "existing tap device to use with --network tap",
        "forward": "add a forward tcp:HOSTPORT:GUESTPORT (or udp:; HOSTPORT may be auto; "
        "repeatable)",
        "no_forward": "remove the forwards matching HOSTPORT, tcp:HOSTPORT or "
        "tcp:HOSTPORT:GUESTPORT (HOSTPORT may be auto), or all of them (repeatable)",
    },
)
def set_(
    c: Context,
    name: str,
    cpus: str | None = None,
    memory: str | None = None,
    disk: str | None = None,
    append: str | None = None,
    network: str | None = None,
    bridge: str | None = None,
    tap: str | None = None,
    forward: list[str] | None = None,
    no_forward: list[str] | None = None,
) -> None:
    """Change a VM made on the command line.

    Change a VM made on the command line: at once when it is stopped, at its next start
    when it runs (show and status say what waits)."""
    from clan_vm_tasks.clan import sync
    from clan_vm_tasks.nix import origin
    from clan_vm_tasks.schema import parse_forward
    from clan_vm_tasks.vm.edit import Edit, check_removal, set_vm

    check_name(name)
    if network is not None and network not in NETWORK_MODES:
        raise InvalidInput(
            f"unknown network mode {network!r}: use one of {', '.join(NETWORK_MODES)}"
        )
    edit = Edit(
        cpus=None if cpus is None else number(cpus, "cpus", 0),
        memory=None if memory is None else number(memory, "memory", 0),
        disk=None if disk is None else number(disk, "disk", 0),
        append=append,
        network=network,
        bridge=bridge,
        tap=tap,
        add_forwards=tuple(parse_forward(f) for f in forward or []),
        remove_forwards=tuple(check_removal(f) for f in no_forward or []),
    )
    if edit.empty():
        raise InvalidInput(
            "set needs something to change: --cpus, --memory, --disk, --append, --network, "
            "--forward or --no-forward"
        )
    store, _ = open_store()
    store.require(name)
    flake = origin.load(store, name).flake
    if flake is not None:
        raise InvalidInput(
            f"VM '{name}' comes from the flake {flake}: change clanVms.{name} there "
            f"(clan-vm-manager start {name} applies it)"
        )
    where = on_host(store.host_of(name))
    done = set_vm(store, name, edit, notice)
    if done.withdrawn:
        say(f"VM '{name}'{where}: the change that waited for its next start is withdrawn")
    elif not done.changes:
        waits = "; a change waits for its next start" if done.pending else ""
        say(f"VM '{name}'{where} already has these settings{waits}")
    elif done.pending:
        say(
            f"VM '{name}'{where} is running; at its next start: {done.summary} "
            f"(clan-vm-manager restart {name} applies it now)"
        )
    else:
        say(f"changed VM '{name}'{where}: {done.summary}")
        for directory in sync.remembered(store, name):  # a forward may have changed
            sync.push(store, name, directory, notice)
