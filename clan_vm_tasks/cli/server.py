"""The command server: a process of this user with the package loaded, which runs each
command handed to it (``cli.handoff``) in a forked worker.

The worker is the command as it would have run in its client: the client's arguments,
environment, working directory, umask and standard streams (the last two received as file
descriptors), through the same ``cli`` code. It tells the client its pid (for signals), runs
the command once the client says go, then tells its exit code; if the client goes away first
(killed), the worker kills itself, as the command would have been. The server only imports,
listens and forks: no command's state lives in it.

One server per user, installation and context (``handoff.identity``), on a socket in the
user's private runtime directory. It serves only ``handoff.SERVED`` commands of clients of
its own user that run where it runs: the same namespaces, cgroup, limits, groups and
privileges (a sandboxed client is never served from outside its sandbox, nor the other way
round; a client elsewhere has a server of its own). It ends after ``handoff.IDLE`` seconds without a
command, or at the first command after a file of a module it loaded changed (that command
runs in its client, which starts a new server).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import clan_vm_tasks
from clan_vm_tasks import cli, names
from clan_vm_tasks.cli import handoff
from clan_vm_tasks.state import files

# What an exec loads: its worker imports nothing more.
PRELOAD = (
    "clan_vm_tasks.cli.parse",
    "clan_vm_tasks.tasks",
    "clan_vm_tasks.tasks.guest",
    "clan_vm_tasks.vm.guest",
    "clan_vm_tasks.backends.qemu.machine",
    "clan_vm_tasks.backends.qemu.agent",
    "clan_vm_tasks.backends.qemu.qmp",  # a VM whose agent has not answered in this boot
    "clan_vm_tasks.backends.agent_wire",
    "clan_vm_tasks.state.history",  # a VM found ended
    "clan_vm_tasks.clan.opening",
    "clan_vm_tasks.vm.recovery",
    "clan_vm_tasks.state.sweep",
    "clan_vm_tasks.state.partials",
)
MAX_REQUEST = 4 << 20  # bytes: arguments and environment
REQUEST_WAIT = 5.0  # seconds a client may take to send its whole request


class Refused(Exception):
    """A request this server does not take."""


class Request(NamedTuple):
    ident: bytes
    umask: int
    streams: list[int]  # which of 0, 1, 2 the client had open, in the order sent
    argv: list[str]
    env: dict[str, str]


def _sources() -> list[tuple[str, int, int]]:
    """The files of the package's loaded modules (this one, run as ``__main__``, among them)
    as they are now: a change means this server would run old code. (A module not loaded
    here is read from disk by the worker.)"""
    package = os.path.dirname(clan_vm_tasks.__file__) + os.sep
    found = []
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(package):
            try:
                info = os.stat(path)
                found.append((path, info.st_mtime_ns, info.st_size))
            except OSError:
                found.append((path, -1, -1))
    return found


def _receive(conn: socket.socket) -> tuple[Request, list[int]]:
    """A request of our own user, and the descriptors that came with it (its working
    directory, then its streams); the whole of it within REQUEST_WAIT."""
    deadline = time.monotonic() + REQUEST_WAIT
    conn.settimeout(REQUEST_WAIT)
    if handoff.peer(conn)[1] != os.getuid():
        raise Refused("another user")
    data, ancillary, _flags, _addr = conn.recvmsg(1 << 16, socket.CMSG_SPACE(4 * 4))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4)]
    try:
        for fd in fds:
            os.set_inheritable(fd, False)
        size = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
        if not 0 <= size <= MAX_REQUEST:
            raise Refused("malformed")
        body = data[4:]
        while len(body) < size:
            conn.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = conn.recv(min(1 << 20, size - len(body)))
            if not chunk:
                raise Refused("cut short")
            body += chunk
        return _parse(body.split(handoff.FIELD), len(fds)), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _parse(fields: list[bytes], fds: int) -> Request:
    ident, umask, streams, count = fields[:4]
    given = [int(fd) for fd in streams.split()]
    argv = [os.fsdecode(word) for word in fields[4 : 4 + int(count)]]
    env = [os.fsdecode(entry).partition("=") for entry in fields[4 + int(count) :]]
    if fds != 1 + len(given) or not set(given) <= set(handoff.STREAMS) or len(argv) < 2:
        raise Refused("malformed")
    return Request(ident, int(umask), given, argv, {key: value for key, _, value in env})


class Server:
    def __init__(self, ident: str, listener: socket.socket, lock: int, started: int) -> None:
        self.ident = os.fsencode(ident)
        self.listener = listener
        self.lock = lock
        self.context = handoff.context("self")
        self.sources = _sources()
        if any(mtime > started for _, mtime, _ in self.sources):
            self.sources = []  # changed while it was loaded: stale from the start

    def serve(self) -> None:
        while select.select([self.listener], [], [], handoff.IDLE)[0]:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # out of descriptors, say: a moment for them to close
                time.sleep(0.1)
                continue
            try:
                if not self.take(conn):
                    return
            finally:
                conn.close()

    def take(self, conn: socket.socket) -> bool:
        """Answer one request (a worker runs it, or the client is told to); False when this
        server should end."""
        try:
            request, fds = _receive(conn)
        except Exception:
            return True
        try:
            if request.ident != self.ident or _sources() != self.sources:
                with contextlib.suppress(OSError):
                    conn.sendall(b"stale\n")
                return request.ident != self.ident  # a client of another installation
            where = handoff.context(handoff.peer(conn)[0])
            if request.argv[1] not in handoff.SERVED or where != self.context:
                conn.sendall(b"decline\n")
                return True
            if os.fork() == 0:
                try:
                    _work(self, conn, request, fds)
                finally:
                    os._exit(1)
            return True
        except Exception:  # the client runs it itself
            return True
        finally:
            for fd in fds:
                os.close(fd)


def _work(server: Server, conn: socket.socket, request: Request, fds: list[int]) -> None:
    """The worker: become the client's command, run it once told to, report; never returns."""
    code = 1
    try:
        server.listener.close()
        os.close(server.lock)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            _become(request, fds)
        except Exception:  # nothing of the command has run: its client runs it itself
            conn.sendall(b"decline\n")
            return
        conn.sendall(b"pid %d\n" % os.getpid())
        conn.settimeout(handoff.REPLY_WAIT)
        if conn.recv(3) != b"go\n":  # the client gave up, and runs it itself
            return
        conn.settimeout(None)
        threading.Thread(target=_die_with_client, args=(conn,), daemon=True).start()
        code = cli.outcome(request.argv)
        conn.sendall(b"exit %d\n" % (code & 0xFF))
    finally:
        os._exit(code)


def _become(request: Request, fds: list[int]) -> None:
    """Take on the client's directory, umask, streams, environment and arguments."""
    os.fchdir(fds[0])
    os.umask(request.umask)
    for target in handoff.STREAMS:
        if target in request.streams:
            os.dup2(fds[1 + request.streams.index(target)], target)
        else:
            os.close(target)
    for fd in fds:
        os.close(fd)
    fds.clear()
    _reopen_streams(request.streams)
    os.environ.clear()
    os.environ.update(request.env)
    time.tzset()
    sys.argv = request.argv


def _reopen_streams(given: list[int]) -> None:
    """Python's standard streams over the new descriptors, as it would have made them (the
    encodings are the client's: ``handoff.identity``; a terminal by lines)."""
    for fd, name in zip(handoff.STREAMS, ("stdin", "stdout", "stderr"), strict=True):
        old = getattr(sys, name)
        stream = None
        if fd in given:
            stream = open(  # noqa: SIM115 - lives as long as the process
                fd,
                "r" if fd == 0 else "w",
                encoding=old.encoding,
                errors=old.errors,
                newline="\n",
                buffering=1 if fd == 2 or (fd == 1 and os.isatty(fd)) else -1,
                closefd=False,
            )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _die_with_client(conn: socket.socket) -> None:
    """The client sends nothing more: anything readable is its end (it was killed)."""
    with contextlib.suppress(OSError):
        select.select([conn], [], [])
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    started = time.time_ns()
    os.chdir("/")
    os.closerange(3, 1 << 16)  # what our starter's caller passed it is not ours to hold
    ident = handoff.identity()
    path = Path(handoff.socket_path(ident))
    files.private_dir(path.parent)
    lock_path = path.with_suffix(".lock")
    lock = files.try_lock(lock_path)
    if lock is None:
        return  # another server of this installation runs
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a killed server's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)  # clients wait in the backlog while the rest loads
    server_pid = os.getpid()

    def ended(_signum: int, _frame: object) -> None:
        if os.getpid() == server_pid:  # not a worker just forked
            raise SystemExit(0)  # its socket is removed on the way out
        os._exit(1)

    signal.signal(signal.SIGTERM, ended)
    try:
        for name in PRELOAD:
            importlib.import_module(name)
        names.sha256(b"")  # loads its hash module
        gc.freeze()  # a worker's collections then leave the server's objects (and pages) alone
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are not waited for
        Server(ident, listener, lock, started).serve()
    finally:
        if os.getpid() == server_pid:
            for made in (path, lock_path):  # the lock last: whoever takes it next makes both
                with contextlib.suppress(FileNotFoundError):
                    made.unlink()


if __name__ == "__main__":
    main()
