"""The QEMU driver: argument building, process control, QMP and the serial console."""
