"""The data port: a virtio-serial port beside the agent's whose bytes become a guest command's
standard input. A copy in sent this way moves raw bytes; through the agent they go as base64
inside JSON, which the guest's qemu-ga parses at some 2.5 MB/s under TCG.

What keeps it exact:

- the guest drops what reaches a port nobody holds open, so nothing is sent until QEMU says a
  guest process opened it (``query-chardev``);
- a reader a killed command left must not take the next command's bytes: the port has to be
  closed before we connect (with no host attached, such a reader reads end of file and ends);
- the guest command reads to end of file, which it sees once our connection closes: a copy
  killed midway leaves a short temporary file, which the next session removes (``guest_temp``);
- the command must exit 0, and the caller checks the size of what it wrote.

A VM without the port (started by an earlier version, on a libvirt host) or a guest that does
not open it (no ``/sys/class/virtio-ports``) is told by ``None``: nothing was sent, and the
caller goes through the agent.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

from clan_vm_tasks.backends.agent_wire import printable
from clan_vm_tasks.backends.base import DATA_PORT, Machine
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.vm import guest
from clan_vm_tasks.vm.agent import Agent

FREE_WAIT = 2.0  # seconds for a reader a killed command left to let go of the port
STALL = 60.0  # seconds the guest may take no bytes at all before the copy fails
OPEN_WAIT = 30.0  # seconds for the guest command to open the port (a busy guest is slow)
LOOK = 0.2  # seconds a send may wait before we look whether the guest command still runs
CHUNK = 1 << 20

# Run by the guest's shell: "$@" with the data port as its standard input; exit 97 when the
# guest has no such port.
REDIRECT = r"""for p in /sys/class/virtio-ports/*; do
  read -r n <"$p/name" 2>/dev/null && [ "$n" = "$0" ] && exec "$@" <"/dev/${p##*/}"
done
exit 97
"""


def _port_free(machine: Machine) -> bool:
    deadline = time.monotonic() + FREE_WAIT
    while (held := machine.data_port_open()) is not False:
        if held is None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _reader_ready(agent: Agent, machine: Machine, pid: int, deadline: float) -> bool:
    """Whether guest process PID holds the port open; False once it ended without."""
    deadline = min(deadline, time.monotonic() + OPEN_WAIT)
    pause = 0.002
    while True:
        if machine.data_port_open():
            return True
        if agent.exec_status(pid, 30.0).exited:
            return False
        if time.monotonic() > deadline:
            raise ClanVMError(f"VM '{agent.name}' did not open its data port within {OPEN_WAIT:g}s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _failed(agent: Agent, argv: list[str], exit_code: int, stderr: bytes) -> ClanVMError:
    # The first line: dd says what went wrong, then its counts.
    lines = stderr.decode(errors="replace").strip().splitlines()
    why = printable(lines[0]) if lines else f"exit code {exit_code}"
    return ClanVMError(f"VM '{agent.name}': {why}")


def _send(
    agent: Agent, argv: list[str], pid: int, sock: socket.socket, fd: int, deadline: float
) -> Iterator[int]:
    """Send what FD holds to the guest's process PID (running ARGV); the total after each
    chunk. A process that ends before taking it all fails the copy at once, a guest that
    takes nothing for STALL seconds fails it then."""
    total, moved = 0, time.monotonic()
    sock.settimeout(LOOK)
    while chunk := os.read(fd, CHUNK):
        view = memoryview(chunk)
        while view:
            try:
                view = view[sock.send(view) :]
                moved = time.monotonic()
                continue
            except TimeoutError:
                pass
            except OSError as error:  # QEMU let go of the connection: the VM ended
                raise ClanVMError(f"VM '{agent.name}' stopped taking the copy: {error}") from None
            status = agent.exec_status(pid, 30.0)
            if status.exited:
                raise _failed(agent, argv, status.exit_code, status.stderr)
            now = time.monotonic()
            if now > deadline or now - moved > STALL:
                raise ClanVMError(
                    f"VM '{agent.name}' took none of the copy for {now - moved:.0f}s; "
                    "nothing was copied"
                )
        total += len(chunk)
        yield total


def stream_in(
    agent: Agent, argv: list[str], fd: int, deadline: float, sent: Callable[[int], None]
) -> int | None:
    """Run ARGV in the guest with what FD holds (to its end) as its standard input, through
    the data port, and wait for it to exit 0; the bytes sent (SENT is told as they go), or
    None when the VM or its guest has no data port (nothing was sent)."""
    machine = agent.machine
    path = None if machine is None else machine.data_socket()
    if machine is None or path is None or not _port_free(machine):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        try:
            sock.connect(str(path))
        except OSError:
            return None
        script = ["/bin/sh", "-c", REDIRECT, DATA_PORT, *argv]
        pid = agent.exec_start(script)
        if not _reader_ready(agent, machine, pid, deadline):
            return None
        total = 0
        for total in _send(agent, argv, pid, sock, fd, deadline):
            sent(total)
        # The end of file the guest command reads to. Not close(): QEMU drops what it has not
        # read yet from a socket whose peer is gone, but reads to the end of one shut down.
        sock.shutdown(socket.SHUT_WR)
        ran = guest.wait(agent, argv, pid, max(1.0, deadline - time.monotonic()))
    finally:
        sock.close()
    if ran.exit_code != 0:
        raise _failed(agent, argv, ran.exit_code, ran.stderr)
    return total
