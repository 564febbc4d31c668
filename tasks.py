"""invoke tasks for this repository: `invoke --list`, `invoke start NAME`."""

from invoke.collection import Collection

from clan_vm_tasks import tasks

ns = Collection.from_module(tasks)
