"""The command server: a process of this user with the package loaded, which runs each
command handed to it (``cli.handoff``) in a forked worker.

The worker is the command as it would have run in its client: the client's arguments,
environment, working directory, umask and standard streams (received as file descriptors),
through the same ``cli`` code. It tells the client its pid (for signals) and then its exit
code; if the client goes away first (killed), the worker kills itself, as the command would
have been. The server only imports, listens and forks: no command's state lives in it.

One server per user and installation (``handoff.identity``), on a socket in the user's
private runtime directory; it takes only connections of its own user, and ends after
``handoff.IDLE`` seconds without a command, or when the package's files change (the next
command then runs in its client and starts a new one).
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
from pathlib import Path

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
    "clan_vm_tasks.clan.opening",
    "clan_vm_tasks.vm.recovery",
    "clan_vm_tasks.state.sweep",
    "clan_vm_tasks.state.partials",
)
MAX_REQUEST = 4 << 20  # bytes: arguments and environment
REQUEST_WAIT = 5.0  # seconds a client may take to send its request


class Refused(Exception):
    """A request this server does not run (the client runs the command itself)."""


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


def _receive(conn: socket.socket) -> tuple[list[bytes], list[int]]:
    """A request's fields and the file descriptors that came with it."""
    conn.settimeout(REQUEST_WAIT)
    peer = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    if int.from_bytes(peer[4:8], sys.byteorder) != os.getuid():
        raise Refused("another user")
    data, ancillary, _flags, _addr = conn.recvmsg(1 << 16, socket.CMSG_SPACE(4 * 3))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4)]
    try:
        if len(data) < 4 or int.from_bytes(data[:4], "big") > MAX_REQUEST:
            raise Refused("malformed")
        size = int.from_bytes(data[:4], "big")
        body = data[4:]
        while len(body) < size:
            chunk = conn.recv(min(1 << 20, size - len(body)))
            if not chunk:
                raise Refused("cut short")
            body += chunk
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return body.split(handoff.FIELD), fds


class Server:
    def __init__(self, ident: str, listener: socket.socket, lock: int) -> None:
        self.ident = ident
        self.listener = listener
        self.lock = lock
        self.sources = _sources()

    def serve(self) -> None:
        while select.select([self.listener], [], [], handoff.IDLE)[0]:
            conn, _ = self.listener.accept()
            try:
                if not self.take(conn):
                    return
            finally:
                conn.close()

    def take(self, conn: socket.socket) -> bool:
        """Run one request in a worker; False when this server should end."""
        try:
            fields, fds = _receive(conn)
        except (Refused, OSError, ValueError):
            return True
        try:
            current = fields[0].decode() == self.ident
            fresh = _sources() == self.sources
            if not (current and fresh):
                with contextlib.suppress(OSError):
                    conn.sendall(b"stale\n")
                return fresh  # a client of another installation: serve on
            with contextlib.suppress(OSError):  # no fork: the client runs it itself
                if os.fork() == 0:
                    _work(self, conn, fields[1:], fds)
            return True
        finally:
            for fd in fds:
                os.close(fd)


def _work(server: Server, conn: socket.socket, fields: list[bytes], fds: list[int]) -> None:
    """The worker: become the client's command, run it, report; never returns."""
    code = 1
    try:
        server.listener.close()
        os.close(server.lock)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            argv = _become(fields, fds)
        except Exception:  # nothing of the command has run: its client runs it itself
            conn.sendall(b"decline\n")
            os._exit(0)
        conn.settimeout(None)
        conn.sendall(b"pid %d\n" % os.getpid())
        threading.Thread(target=_die_with_client, args=(conn,), daemon=True).start()
        code = cli.outcome(argv)
        conn.sendall(b"exit %d\n" % code)
    finally:
        os._exit(code)


def _become(fields: list[bytes], fds: list[int]) -> list[str]:
    """Take on the client's streams, directory, umask and environment; its argv."""
    cwd, umask, streams, count = (os.fsdecode(f) for f in fields[:4])
    given = [int(fd) for fd in streams.split()]
    if len(given) != len(fds) or not set(given) <= set(handoff.STREAMS):
        raise ValueError("streams")
    argv = [os.fsdecode(word) for word in fields[4 : 4 + int(count)]]
    if not argv:
        raise ValueError("argv")
    env = [os.fsdecode(entry).partition("=") for entry in fields[4 + int(count) :]]
    os.chdir(cwd)
    os.umask(int(umask))
    for target in handoff.STREAMS:
        if target in given:
            os.dup2(fds[given.index(target)], target)
        else:
            os.close(target)
    _reopen_streams(given)
    os.environ.clear()
    os.environ.update({key: value for key, _, value in env})
    return argv


def _reopen_streams(given: list[int]) -> None:
    """Python's standard streams over the new descriptors, buffered as it would have chosen
    (a terminal by lines)."""
    for fd, name in zip(handoff.STREAMS, ("stdin", "stdout", "stderr"), strict=True):
        old = getattr(sys, name)
        if fd not in given:
            setattr(sys, name, None)
            continue
        errors = "backslashreplace" if fd == 2 else (old.errors if old else "strict")
        stream = open(  # noqa: SIM115 - lives as long as the process
            fd,
            "r" if fd == 0 else "w",
            encoding=old.encoding if old else None,
            errors=errors,
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


def _ended(_signum: int, _frame: object) -> None:
    raise SystemExit(0)  # its socket is removed on the way out


def main() -> None:
    os.chdir("/")
    os.closerange(3, 1 << 16)  # what our starter's caller passed it is not ours to hold
    ident = handoff.identity()
    path = Path(handoff.socket_path(ident))
    files.private_dir(path.parent)
    lock_path = path.with_suffix(".lock")
    lock = files.try_lock(lock_path)
    if lock is None:
        return  # another server of this installation runs
    for name in PRELOAD:
        importlib.import_module(name)
    names.sha256(b"")  # loads its hash module
    gc.freeze()  # a worker's collections then leave the server's objects (and pages) alone
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a killed server's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are not waited for
    signal.signal(signal.SIGTERM, _ended)
    try:
        Server(ident, listener, lock).serve()
    finally:
        for made in (path, lock_path):  # the lock last: whoever takes it next makes both
            with contextlib.suppress(FileNotFoundError):
                made.unlink()


if __name__ == "__main__":
    main()
