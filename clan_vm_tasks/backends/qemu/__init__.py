"""The local QEMU backend: command line, processes, QMP, console, accelerator, images, host
networking."""
