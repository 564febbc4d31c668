"""The clan task: ``inventory push|remove NAME``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.names import check_name
from clan_vm_tasks.tasks.common import CLAN_DIR_HELP, NAME_HELP, open_store, say, vm_task

if TYPE_CHECKING:
    from invoke.context import Context


@vm_task(
    positional=["action", "name"],
    iterable=["tag"],
    examples=["inventory push web --clan-dir ~/my-clan --tag dev", "inventory remove web"],
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
    """Add a VM to a clan's inventory, or take it out.

    Add a VM to the clan's inventory.json as a machine (push), or take it out (remove)."""
    from clan_vm_tasks.clan import inventory as inv
    from clan_vm_tasks.clan import sync

    check_name(name)
    directory = sync.named_clan_dir(clan_dir)
    if directory is None:
        raise InvalidInput("no clan directory: pass --clan-dir DIR or set CLAN_DIR")
    path = directory / inv.INVENTORY_FILE
    if action == "push":
        store, _ = open_store()
        store.require(name)
        machine = sync.clan_machine(store, name)
        if machine is not None:
            raise InvalidInput(
                f"VM '{name}' is the VM of the clan machine {machine} (its nixosConfiguration), "
                f"which needs no inventory entry of its own; {sync.update_hint(name, machine)}"
            )
        port, address = sync.ssh_target(store, name) or (None, "127.0.0.1")
        changed = inv.push(
            directory,
            name,
            ssh_port=port,
            address=address,
            tags=tag or [],
            force=force,
            commit=commit,
        )
        with store.lock(name):  # delete takes it out of this clan again
            if store.exists(name):
                sync.remember(store, name, directory)
        say(f"{'updated' if changed else 'unchanged:'} machine '{name}' in {path}")
    elif action == "remove":
        changed = inv.remove(directory, name, force=force, commit=commit)
        store, _ = open_store()
        if store.exists(name):
            with store.lock(name):
                if store.exists(name):
                    sync.remember(store, name, directory, keep=False)
        say(f"{'removed' if changed else 'nothing to remove:'} machine '{name}' from {path}")
    else:
        raise InvalidInput(f"unknown inventory action {action!r}: use push or remove")
