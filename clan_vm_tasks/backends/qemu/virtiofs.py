"""virtiofs shares: one QEMU virtiofsd per share, started before QEMU and ended with it.

virtiofsd has no read-only option, so each runs in a mount namespace of its own and serves
a bind mount of its share's source there (the directory the launch opened and checked); a
read-only share's is read-only: the host refuses the guest's writes, whatever the guest
mounts. The tool makes the listening socket and hands it over
(``--fd``), so QEMU can connect at once and virtiofsd writes no pidfile of its own. A
virtiofsd serves one connection and exits when QEMU goes; one whose QEMU never came (a
start that failed or was killed) is found by its argv[0], which names its socket in the
VM's runtime directory (as its launcher's arguments do), and ended by the next command
(``end``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clan_vm_tasks.backends.qemu import process
from clan_vm_tasks.errors import ClanVMError

if TYPE_CHECKING:
    import subprocess

    from clan_vm_tasks.models import VMConfig
    from clan_vm_tasks.state.store import VMPaths

VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")  # QEMU's own (Debian: qemu-system-common)
UNSHARE = "unshare"
MARK = "virtiofsd:"  # argv[0] of a virtiofsd of ours: MARK and the socket it serves
NINE_P = 'use type = "9p" (QEMU enforces readOnly itself)'

# Run by ``python -IS`` inside the new mount namespace; then it becomes virtiofsd. Its
# working directory is the share's directory the launch opened and checked: set from that
# descriptor (``/proc/self/fd/N``) before ``unshare``, which moves it into the new namespace,
# so the directory is bind-mounted as ``.``, never looked up by name again, onto an empty
# directory of the VM's own, which is what virtiofsd serves. Its device and inode are
# compared with IDENTITY (empty for the VM's own) all the same. A read-only one is made
# read-only with its submounts (mount_setattr, Linux 5.12). The check of the parent closes
# the gap before the exec: a start killed until then leaves no virtiofsd, and from the exec
# on argv[0] names it.
SCRIPT = """\
import ctypes, os, struct, sys
mark, identity, target, ro, parent, binary, *args = sys.argv[1:]
libc = ctypes.CDLL(None, use_errno=True)
def must(result, what):
    if result != 0:
        error = os.strerror(ctypes.get_errno())
        sys.exit(f"virtiofsd: cannot {what} the shared directory: {error}")
info = os.stat(".")
if identity and f"{info.st_dev}:{info.st_ino}" != identity:
    sys.exit("virtiofsd: the shared directory is not the one that was checked")
into = target.encode()
must(libc.mount(b".", into, None, ctypes.c_ulong(0x5000), None), "bind-mount")
os.chdir("/")
if ro:
    attr = struct.pack("QQQQ", 1, 0, 0, 0)
    size = ctypes.c_size_t(len(attr))
    must(libc.syscall(ctypes.c_long(442), -100, into, 0x8000, attr, size), "make read-only")
if os.getppid() != int(parent):
    sys.exit("virtiofsd: the start that launched it is gone")
os.execv(binary, [mark, *args])
"""


def socket_path(run_dir: Path, tag: str) -> Path:
    """Where QEMU reaches the virtiofsd of share TAG."""
    return run_dir / f"virtiofs-{tag}.sock"


def mount_point(sock: Path) -> Path:
    """Where the share served on SOCK is bind-mounted, in its virtiofsd's namespace only:
    beside the socket."""
    return sock.with_suffix(".root")


def _fuse_escape(value: str) -> str:
    """virtiofsd splits -o values at commas; a backslash escapes one."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def command(
    sock: Path,
    fd: int,
    *,
    read_only: bool,
    parent: int,
    root: bool,
    python: str,
    identity: str | None = None,
) -> list[str]:
    """The virtiofsd of one share, serving the listening socket FD (made at SOCK), in a mount
    namespace of its own (a user namespace too when not ROOT); it is to be started in the
    shared directory (see SCRIPT). A pure function."""
    userns = [] if root else ["--user", "--map-root-user"]
    served = mount_point(sock)
    options = f"source={_fuse_escape(str(served))},sandbox=namespace,xattr"
    return [
        UNSHARE, "--mount", "--propagation", "private", *userns, "--",
        python, "-IS", "-c", SCRIPT,
        MARK + str(sock), identity or "", str(served), "ro" if read_only else "",
        str(parent), str(VIRTIOFSD), f"--fd={fd}", "-o", options,
    ]  # fmt: skip


def problem(config: VMConfig, *, installed: bool, root: bool, userns: bool) -> str | None:
    """Why this host cannot serve CONFIG's virtiofs shares (None: it can); a pure function."""
    tags = sorted(tag for tag, share in config.shares.items() if share.type == "virtiofs")
    if not tags:
        return None
    which = f"share {', '.join(tags)} of VM '{config.name}' is virtiofs"
    if not installed:
        return f"{which}, which needs QEMU's {VIRTIOFSD} (Debian: qemu-system-common); {NINE_P}"
    if root or userns:
        return None
    unable = (
        "a mount namespace of its own (as root, or in a user namespace), which cannot be made "
        "here (no user namespaces, or a chroot)"
    )
    read_only = sorted(tag for tag in tags if config.shares[tag].read_only)
    if read_only:
        return (
            f"share {', '.join(read_only)} of VM '{config.name}' is read-only virtiofs: "
            f"virtiofsd has no read-only mode, and enforcing it on the host needs {unable}; "
            f"{NINE_P}"
        )
    return f"{which}: virtiofsd needs {unable}; {NINE_P}"


def _probe(argv: list[str]) -> bool:
    import subprocess  # lazy (here and below): status and list never start one

    try:
        return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _user_namespaces() -> bool:
    return _probe([UNSHARE, "--user", "--map-root-user", "--mount", "true"])


def _private_mounts() -> bool:
    """Whether root can make a private mount namespace: not in a chroot, whose root is no
    mount point."""
    return _probe([UNSHARE, "--mount", "--propagation", "private", "true"])


def share_problem(config: VMConfig) -> str | None:
    """``problem`` for this host: the namespaces are probed only when they matter."""
    if not any(share.type == "virtiofs" for share in config.shares.values()):
        return None
    root = os.geteuid() == 0
    installed = VIRTIOFSD.is_file()
    root = root and installed and _private_mounts()
    userns = installed and not root and _user_namespaces()
    return problem(config, installed=installed, root=root, userns=userns)


@dataclass(frozen=True)
class _Daemon:
    tag: str
    child: subprocess.Popen[bytes]
    log: Path

    def failure(self) -> str | None:
        if not self.child.poll():  # running, or done after its QEMU went (status 0)
            return None
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        said = f": {' | '.join(lines[-3:])}" if lines else ""
        return f"virtiofsd of share '{self.tag}' exited with status {self.child.returncode}{said}"


def _spawn(config: VMConfig, paths: VMPaths, started: list[_Daemon]) -> None:
    import subprocess

    shared = [
        (tag, share) for tag, share in sorted(config.shares.items()) if share.type == "virtiofs"
    ]
    if not shared:
        return  # nothing to probe either: a start without virtiofs runs no unshare
    root = os.geteuid() == 0 and _private_mounts()  # as share_problem decided
    for tag, share in shared:
        sock = socket_path(paths.run, tag)
        sock.unlink(missing_ok=True)
        mount_point(sock).mkdir(mode=0o700, exist_ok=True)
        log = paths.dir / f"virtiofsd-{tag}.log"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener, log.open("wb") as err:
            listener.bind(str(sock))
            listener.listen(1)
            argv = command(
                sock,
                listener.fileno(),
                read_only=share.read_only,
                parent=os.getpid(),
                root=root,
                python=sys.executable,
                identity=share.identity,
            )
            try:
                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    pass_fds=(listener.fileno(),),
                    # The opened directory (share_dirs): the child's copy of the descriptor.
                    cwd=share.source or paths.share_dir(tag),
                    start_new_session=True,  # a Ctrl-C or a closed terminal is not for it
                )
            except OSError as error:
                raise ClanVMError(f"cannot run virtiofsd for share '{tag}': {error}") from None
        started.append(_Daemon(tag, child, log))


@contextlib.contextmanager
def serving(config: VMConfig, paths: VMPaths) -> Iterator[None]:
    """Start the virtiofsd of every virtiofs share, for the QEMU launched inside the block
    (each is started in the directory ``share_dirs`` opened for its share, and serves it).
    Whatever fails or interrupts the block ends them; a failure says why one of them
    ended, if one did (its own words, from its log)."""
    import subprocess

    end(paths)  # of a boot before, should one be left
    started: list[_Daemon] = []
    try:
        _spawn(config, paths, started)
        yield
    except BaseException as error:
        failures = [f for f in (d.failure() for d in started) if f]
        for daemon in started:  # our children: their pids cannot have been reused
            with contextlib.suppress(ProcessLookupError):
                daemon.child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.child.wait(5.0)
        with contextlib.suppress(ClanVMError):  # the next command tries again (abandon)
            end(paths)
        if failures and isinstance(error, ClanVMError):
            raise ClanVMError(f"{error}; {'; '.join(failures)}") from None
        raise


def _ours(run_dir: Path) -> process.Ours:
    """Whether a command line is a virtiofsd of the VM whose sockets are in RUN_DIR, or its
    launcher (unshare, then python) before it became one."""
    prefix = f"{MARK}{run_dir}/virtiofs-"

    def ours(argv: list[str]) -> bool:
        if not argv or argv[0].startswith(prefix):  # [] when it has just exited
            return bool(argv)
        after = argv.index(SCRIPT) + 1 if SCRIPT in argv else len(argv)
        return after < len(argv) and argv[after].startswith(prefix)

    return ours


def end(paths: VMPaths, grace: float = 0.0) -> None:
    """End every virtiofsd of this VM (given GRACE seconds to exit by itself) and remove its
    socket. Only when no QEMU of the VM runs: it would lose its shares."""
    survivors = process.end_helpers(_ours(paths.run), grace)
    if survivors:
        raise ClanVMError(f"virtiofsd (pid {survivors[0]}) survived SIGKILL")
    with contextlib.suppress(FileNotFoundError):
        for sock in paths.run.glob("virtiofs-*.sock"):
            sock.unlink(missing_ok=True)
        for point in paths.run.glob("virtiofs-*.root"):
            with contextlib.suppress(OSError):  # empty here: the mount is virtiofsd's own
                point.rmdir()
