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
- the command must exit 0, and a file written (``to_file``) must have the size sent.

A VM without the port (started by an earlier version, on a libvirt host) or a guest that does
not open it (no ``/sys/class/virtio-ports``) is told by ``None``: nothing was sent, and the
caller goes through the agent.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

from clan_vm_tasks.backends.agent_wire import printable
from clan_vm_tasks.backends.base import DATA_PORT, Machine
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.vm.agent import Agent

FREE_WAIT = 2.0  # seconds for a reader a killed command left to let go of the port
STALL = 60.0  # seconds the guest may take no bytes at all before the copy fails
OPEN_WAIT = 30.0  # seconds for the guest command to open the port (a busy guest is slow)
LOOK = 0.2  # seconds a send may wait before we look whether the guest command still runs
CHUNK = 1 << 20

# Run by the guest's shell: "$@" with the data port (named $0) as its standard input; it ends
# without opening it when the guest has no such port.
REDIRECT = r"""for p in /sys/class/virtio-ports/*; do
  read -r n <"$p/name" 2>/dev/null && [ "$n" = "$0" ] && exec "$@" <"/dev/${p##*/}"
done
exit 97
"""
# "$1" gets what is sent; then its size, on stdout (busybox's dd does not say how much it wrote).
TO_FILE = ["/bin/sh", "-c", 'dd of="$1" bs=256k || exit; wc -c <"$1"']


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


def _failed(agent: Agent, exit_code: int, stderr: bytes) -> ClanVMError:
    # The first line: dd says what went wrong, then its counts.
    lines = stderr.decode(errors="replace").strip().splitlines()
    why = printable(lines[0]) if lines else f"exit code {exit_code}"
    return ClanVMError(f"VM '{agent.name}': {why}")


class Sink:
    """The data port while guest process PID (running ARGV) reads it as its standard input."""

    def __init__(
        self, agent: Agent, argv: list[str], pid: int, sock: socket.socket, deadline: float
    ) -> None:
        self.agent, self.argv, self.pid, self.deadline = agent, argv, pid, deadline
        self.sent = 0
        self._sock = sock
        self._sock.settimeout(LOOK)
        self._moved = time.monotonic()

    def write(self, data: bytes) -> None:
        """Send DATA. A process that ended before taking it all fails the copy at once, a
        guest that takes nothing for STALL seconds fails it then."""
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view) :]
                self._moved = time.monotonic()
                continue
            except TimeoutError:
                pass
            except OSError as error:  # QEMU let go of the connection: the VM ended
                raise ClanVMError(
                    f"VM '{self.agent.name}' stopped taking the data: {error}"
                ) from None
            status = self.agent.exec_status(self.pid, 30.0)
            if status.exited:
                raise _failed(self.agent, status.exit_code, status.stderr)
            now = time.monotonic()
            if now > self.deadline or now - self._moved > STALL:
                raise ClanVMError(
                    f"VM '{self.agent.name}' took none of the data for {now - self._moved:.0f}s"
                )
        self.sent += len(data)

    def finish(self) -> int:
        """The end of what is sent; once the process has read it and exited 0, the bytes sent.
        Not close(): QEMU drops what it has not read yet from a socket whose peer is gone,
        but reads to the end of one shut down."""
        self._sock.shutdown(socket.SHUT_WR)
        status = self.agent.exited(self.pid, min(self.deadline, time.monotonic() + STALL))
        if status is None:
            raise ClanVMError(f"VM '{self.agent.name}' did not finish taking the data in time")
        if status.exit_code != 0:
            raise _failed(self.agent, status.exit_code, status.stderr)
        if self.argv[:3] == TO_FILE:
            got = status.stdout.strip()
            if got != str(self.sent).encode():
                shown = printable(got.decode(errors="replace"), 40)
                raise ClanVMError(f"VM '{self.agent.name}' received {shown} of {self.sent} bytes")
        return self.sent

    def close(self) -> None:
        self._sock.close()  # before finish(): the process reads an end of file, short


def _start(agent: Agent, argv: list[str], deadline: float) -> Sink | None:
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
            sock.close()
            return None
        pid = agent.exec_start(["/bin/sh", "-c", REDIRECT, DATA_PORT, *argv])
        if _reader_ready(agent, machine, pid, deadline):
            return Sink(agent, argv, pid, sock, deadline)
    except BaseException:
        sock.close()
        raise
    sock.close()
    return None


@contextlib.contextmanager
def opened(agent: Agent, argv: list[str], deadline: float) -> Iterator[Sink | None]:
    """ARGV started in the guest with the data port as its standard input; None (and nothing
    sent) when the VM or its guest has no data port: the caller goes through the agent."""
    sink = _start(agent, argv, deadline)
    try:
        yield sink
    finally:
        if sink is not None:
            sink.close()


def to_file(
    agent: Agent, path: str, deadline: float
) -> contextlib.AbstractContextManager[Sink | None]:
    """The guest's ``dd`` writing what is sent to PATH (made there already); ``finish``
    checks the size it has."""
    return opened(agent, [*TO_FILE, "sh", path], deadline)
