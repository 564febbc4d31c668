from clan_vm_tasks.cli import entry

entry()
