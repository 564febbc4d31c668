"""The clan inventory: ``inventory.json`` and keeping it in step with VMs."""
