"""Handing a command to the command server (``cli.server``), as ssh hands a session to its
ControlMaster.

``exec`` is what scripts run in loops, and most of an ``exec`` that loads the package itself
is the loading (some 45 of 100 ms). The server is a process of this user that has it loaded
already; for each command it forks a worker that runs the command with this process's
arguments, environment, working directory, umask and standard streams (passed as file
descriptors), through the same ``cli.main`` as here, while this process waits for its exit
code and forwards the signals it gets. Where no server answers, the command runs here, as
always, and a server is started for the next one (it ends after ``IDLE`` seconds unused, or
when the package's files change). ``CLAN_VM_SERVER=off`` turns it off.

Only ``os``, ``stat``, ``zlib``, ``array``, ``signal`` and ``_socket`` are imported here: this
runs before anything else is loaded.
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
SWITCH = "CLAN_VM_SERVER"
STREAMS = (0, 1, 2)
FIELD = b"\0"  # separates a request's fields: no argument, variable or path holds a NUL
ENDED = "error: the command's worker (pid {pid}) ended without an exit status\n"


def wanted(words: list[str]) -> bool:
    return bool(words) and words[0] in SERVED and os.environ.get(SWITCH, "on") != "off"


def identity() -> str:
    """What a server must share with its client: the interpreter, the package's files and how
    arguments are decoded."""
    import clan_vm_tasks

    package = os.path.dirname(os.path.abspath(clan_vm_tasks.__file__))
    return "\n".join(
        [sys.executable, package, clan_vm_tasks.__version__, sys.getfilesystemencoding()]
    )


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


def request(ident: str, argv: list[str], fds: list[int]) -> bytes:
    umask = os.umask(0o077)
    os.umask(umask)
    env = [f"{key}={value}" for key, value in os.environ.items()]
    fields = [ident, os.getcwd(), str(umask), " ".join(map(str, fds))]
    fields += [str(len(argv)), *argv, *env]
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
    whether to start a server. None when no server took the command: nothing of it has run.
    """
    try:
        ident = identity()
        path = socket_path(ident)
        if not private(os.path.dirname(path)):
            return None, not os.path.lexists(os.path.dirname(path))
        fds = _open_streams()
        message = request(ident, argv, fds)
    except (OSError, ValueError):
        return None, False
    import _socket

    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.connect(path)
        peer = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        if int.from_bytes(peer[4:8], sys.byteorder) != os.getuid():
            return None, False
        import array

        rights = array.array("i", fds).tobytes()
        sent = conn.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        if sent < len(message):
            conn.sendall(message[sent:])
        replies = _Replies(conn)
        first = replies.line()
    except OSError as error:
        conn.close()
        return None, isinstance(error, (FileNotFoundError, ConnectionRefusedError))
    if not (first.startswith(b"pid ") and first[4:].isdigit()):
        conn.close()
        return None, first == b"stale"
    return _wait(replies, int(first[4:])), False


def _wait(replies: _Replies, pid: int) -> int:
    """The worker's exit code, forwarding the signals that would have reached the command had
    it run here (a terminal's ^C reaches only this process group)."""
    import signal

    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return  # it has ended

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, forward)
    try:
        last = replies.line()
    except OSError:
        last = b""
    if last.startswith(b"exit ") and last[5:].isdigit():
        return int(last[5:])
    if forwarded:  # it ended of the signal we passed on: so do we
        signal.signal(forwarded[-1], signal.SIG_DFL)
        os.kill(os.getpid(), forwarded[-1])
    sys.stderr.write(ENDED.format(pid=pid))
    return 1


def start_server() -> None:
    """Start a server for the next command, in a session of its own, holding none of our
    files open (a reader of our output must not wait for it). It imports from where we do:
    our import path, which a wrapper script may have set (nixpkgs' do), not the working
    directory (-P)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path[1:])}
    argv = [sys.executable, "-P", "-m", "clan_vm_tasks.cli.server"]
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        actions = [(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in STREAMS]
        os.posix_spawn(sys.executable, argv, env, file_actions=actions, setsid=True)
        os.close(devnull)
    except OSError:
        pass
