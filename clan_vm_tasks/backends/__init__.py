"""Hypervisor backends: the interface the VM operations use, and its implementations."""
