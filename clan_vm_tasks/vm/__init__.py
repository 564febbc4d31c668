"""The operations on a VM (create, start, stop, delete, list, snapshots, ...), written against
the backend interface in ``clan_vm_tasks.backends.base``."""
