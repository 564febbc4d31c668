"""`invoke start web`, `invoke list --flake`, `invoke boot-test`: the clan-vm-manager tasks here.

Needs clan-vm-tasks installed (`nix develop`, or `pip install clan-vm-tasks`).
"""

from invoke.collection import Collection

from clan_vm_tasks import tasks

ns = Collection.from_module(tasks)
