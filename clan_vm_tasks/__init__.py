"""QEMU virtual machines from Nix flakes, driven by invoke tasks."""

__version__ = "0.1.0"
