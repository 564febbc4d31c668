"""Handing a command to the command server (``cli.server``), as ssh hands a session to its
ControlMaster.

``exec`` is what scripts run in loops, and most of an ``exec`` that loads the package itself
is the loading (some 45 of 100 ms). The server is a process of this user that has it loaded
already; for each command it forks a worker that runs the command with this process's
arguments, environment, working directory, umask and standard streams (the last two passed
as file descriptors), through the same ``cli.main`` as here, while this process waits for
its exit code and passes on the signals it gets. Where no server answers, the command runs
here, as always, and a server is started for the next one (it ends after ``IDLE`` seconds
unused, or when the package's files change). ``CLAN_VM_SERVER=off`` turns it off.

This runs before anything else is loaded: besides the package's version and
``state.location``, it imports only ``stat``, ``zlib``, ``_socket``, ``array`` and ``signal``.
"""

from __future__ import annotations

import os
import stat
import sys

from clan_vm_tasks.state.location import runtime_root

TYPE_CHECKING = False  # typing itself would cost more than the rest of this module
if TYPE_CHECKING:
    from _socket import socket as Socket

SERVED = ("exec",)
IDLE = 600.0  # seconds a server waits for its next command before it ends
REPLY_WAIT = 5.0  # seconds a server may take to make a worker; then the command runs here
SWITCH = "CLAN_VM_SERVER"
STREAMS = (0, 1, 2)
FIELD = b"\0"  # separates a request's fields: no argument, variable or path holds a NUL
# What reaches this process and would have reached the command (a terminal's ^C reaches only
# this process group). Not ^Z: a worker stopped with its client could not see the client
# killed while stopped, and would hold the VM's agent; it goes on, its client waits stopped.
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
ENDED = "error: the command's worker (pid {pid}) ended without an exit status\n"
# Where a process runs, beyond its uid: a server serves only clients that share all of it.
NAMESPACES = ("mnt", "pid", "net", "user", "ipc", "uts", "cgroup")
STATUS = ("NoNewPrivs", "Seccomp", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "Groups")


def wanted(words: list[str]) -> bool:
    return bool(words) and words[0] in SERVED and os.environ.get(SWITCH, "on") != "off"


def identity() -> str:
    """What a server must share with its client: the interpreter, the package's files, how
    arguments are decoded, how the standard streams are written, and where it runs."""
    import zlib

    import clan_vm_tasks

    package = os.path.dirname(os.path.abspath(clan_vm_tasks.__file__))
    streams = [f"{s.encoding}:{s.errors}" if s else "-" for s in (sys.stdout, sys.stderr)]
    where = f"{zlib.crc32(repr(context('self')).encode()):08x}"
    fields = [sys.executable, package, clan_vm_tasks.__version__, sys.getfilesystemencoding()]
    return "\n".join([*fields, *streams, where])


def context(pid: int | str) -> tuple[object, ...]:
    """Where process PID runs: its namespaces, cgroup, resource limits, groups, privileges."""
    spaces = tuple(os.stat(f"/proc/{pid}/ns/{name}").st_ino for name in NAMESPACES)
    with open(f"/proc/{pid}/status") as status:
        kept = tuple(line for line in status if line.startswith(STATUS))
    with open(f"/proc/{pid}/cgroup") as cgroup, open(f"/proc/{pid}/limits") as limits:
        return spaces, kept, cgroup.read(), limits.read()


def socket_path(ident: str) -> str:
    import zlib

    return f"{runtime_root()}/cmd-{zlib.crc32(ident.encode()):08x}.sock"


def private(directory: str) -> bool:
    """Whether DIRECTORY is ours alone: a socket in a directory someone else controls could
    be theirs, and the request carries our environment and our file descriptors."""
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def peer(conn: Socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end of a unix socket."""
    from _socket import SO_PEERCRED, SOL_SOCKET

    raw = conn.getsockopt(SOL_SOCKET, SO_PEERCRED, 12)
    return int.from_bytes(raw[:4], sys.byteorder), int.from_bytes(raw[4:8], sys.byteorder)


def request(ident: str, argv: list[str], streams: list[int]) -> bytes:
    """The request's bytes: a length, then the fields (the working directory and the streams
    go with it as descriptors)."""
    umask = os.umask(0o077)
    os.umask(umask)
    env = [f"{key}={value}" for key, value in os.environ.items()]
    fields = [ident, str(umask), " ".join(map(str, streams)), str(len(argv)), *argv, *env]
    body = FIELD.join(os.fsencode(field) for field in fields)
    return len(body).to_bytes(4, "big") + body


def _open_streams() -> list[int]:
    found = []
    for fd in STREAMS:
        try:
            os.fstat(fd)
            found.append(fd)
        except OSError:
            pass
    return found


class _Replies:
    """The worker's reply lines ("pid N", then "exit N"), which may arrive in one read."""

    def __init__(self, conn: Socket) -> None:
        self.conn = conn
        self.buffer = b""

    def line(self) -> bytes:
        """The next line, or b"" when the connection ended first."""
        while b"\n" not in self.buffer:
            chunk = self.conn.recv(64)
            if not chunk:
                return b""
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def run(argv: list[str]) -> tuple[int | None, bool]:
    """Runs the command ARGV (as sys.argv) in a worker of the server: its exit code, and
    whether to start a server. None when no server took the command: nothing of it has run
    (a worker runs it only once told to go on, which is the last thing said before we wait).
    """
    try:
        ident = identity()
        path = socket_path(ident)
        if not private(os.path.dirname(path)):
            return None, not os.path.lexists(os.path.dirname(path))
        streams = _open_streams()
        message = request(ident, argv, streams)
    except (OSError, ValueError):
        return None, False
    import _socket

    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    conn.settimeout(REPLY_WAIT)
    replies = _Replies(conn)
    with _held() as signals:
        try:
            first = _hand(conn, path, message, streams, replies)
            pid = int(first[4:]) if first.startswith(b"pid ") and first[4:].isdigit() else None
            if pid is not None:
                conn.sendall(b"go\n")
        except OSError as error:
            conn.close()
            return None, isinstance(error, (FileNotFoundError, ConnectionRefusedError))
        if pid is None:
            conn.close()
            return None, first == b"stale"
        forwarded = _forward(signals, pid)
    conn.settimeout(None)
    return _wait(replies, pid, forwarded), False


def _hand(conn: Socket, path: str, message: bytes, streams: list[int], replies: _Replies) -> bytes:
    """Send the request, with our working directory and streams; the first reply."""
    conn.connect(path)
    if peer(conn)[1] != os.getuid():
        return b""
    import array
    from _socket import SCM_RIGHTS, SOL_SOCKET

    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        rights = array.array("i", [cwd, *streams]).tobytes()
        sent = conn.sendmsg([message], [(SOL_SOCKET, SCM_RIGHTS, rights)])
    finally:
        os.close(cwd)
    if sent < len(message):
        conn.sendall(message[sent:])
    return replies.line()


class _held:
    """Signals that would go to the worker are held until it is known (then passed on) or
    the command runs here (then they act here, as they would have)."""

    def __enter__(self) -> list[int]:
        import signal

        self.signals = [
            number
            for name in FORWARDED
            if signal.getsignal(number := getattr(signal, name)) is not signal.SIG_IGN
        ]
        signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        return self.signals

    def __exit__(self, *_: object) -> None:
        import signal

        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signals)


def _forward(signals: list[int], pid: int) -> list[int]:
    """Pass SIGNALS on to the worker PID from now on: the ones passed on, as they come."""
    import signal

    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return  # it has ended

    for signum in signals:
        signal.signal(signum, forward)
    return forwarded


def _wait(replies: _Replies, pid: int, forwarded: list[int]) -> int:
    """The worker's exit code; if it ended of a signal we passed on, so do we."""
    try:
        last = replies.line()
    except OSError:
        last = b""
    if last.startswith(b"exit ") and last[5:].isdigit():
        return int(last[5:])
    import signal

    if forwarded:
        signal.signal(forwarded[-1], signal.SIG_DFL)
        os.kill(os.getpid(), forwarded[-1])
    sys.stderr.write(ENDED.format(pid=pid))
    return 1


def start_server() -> None:
    """Start a server for the next command, in a session of its own, holding none of our
    files open (a reader of our output must not wait for it). It imports from where we do:
    our import path, which a wrapper script may have set (nixpkgs' do), not the working
    directory (-P) unless we were run with it."""
    path = sys.path if sys.flags.safe_path else sys.path[1:]  # [0]: the script's directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    argv = [sys.executable, "-P", "-m", "clan_vm_tasks.cli.server"]
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    try:
        actions = [(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in STREAMS]
        os.posix_spawn(sys.executable, argv, env, file_actions=actions, setsid=True)
    except OSError:
        pass
    finally:
        os.close(devnull)
