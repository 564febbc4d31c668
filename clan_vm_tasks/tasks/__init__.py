"""The invoke tasks, one module per area, assembled into one collection.

Shared by ``invoke`` (the repository's and the template's ``tasks.py`` use
``Collection.from_module(clan_vm_tasks.tasks)``, which picks up ``ns``),
``clan-vm-manager`` and ``python -m clan_vm_tasks``. Task modules import
only ``tasks.common``, never each other.
"""

from invoke.collection import Collection

from clan_vm_tasks.tasks import clan, disks, guest, nix, views, vms, web

ns = Collection()
for _module in (vms, views, disks, guest, nix, clan, web):
    for _task in Collection.from_module(_module).tasks.values():
        ns.add_task(_task)
