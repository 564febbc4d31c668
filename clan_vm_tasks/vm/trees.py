"""``copy -r``: directory trees into and out of a running guest, as a tar stream through its
agent (the guest's ``tar`` packs and unpacks, as ``docker cp`` does).

On the host nothing is ever followed: a tree going in is read through directory file
descriptors with ``O_NOFOLLOW`` (a symlink is sent as a link); a tree coming out is unpacked
by us, not by ``tarfile``'s extractor, each entry made relative to its parent directory's
descriptor, exclusively, no link followed, modes kept without setuid, setgid or sticky bits,
into a partial directory renamed into place at the end. Devices are not copied.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from clan_vm_tasks.backends.agent_wire import printable
from clan_vm_tasks.errors import ClanVMError, InvalidInput
from clan_vm_tasks.render import Notify, notice
from clan_vm_tasks.state import partials
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import copying, dataport, guest, guest_temp
from clan_vm_tasks.vm.agent import Agent, session
from clan_vm_tasks.vm.signals import interruptible

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Run by the guest's shell: pack directory $1 into a new temporary file in /tmp (named from
# the template $2), print its name; exit 3 when $1 is no directory (then it is copied as a file).
PACK = r"""[ -d "$1" ] || exit 3
a=$(mktemp "/tmp/$2") || exit 4
tar -cf "$a" -C "$1" . || { rm -f -- "$a"; exit 5; }
printf '%s\n' "$a"
"""
# Unpack the archive $1/archive.tar into $1/tree, give it mode $3, put it at $2.
UNPACK = r"""mkdir "$1/tree" && tar -xof "$1/archive.tar" -C "$1/tree" || exit 5
chmod "$3" "$1/tree" 2>/dev/null; mv -T -- "$1/tree" "$2" || exit 5
rm -rf -- "$1"
"""


class _Stream:
    """What tarfile's stream modes ask of a file besides reading or writing (never used)."""

    def read(self, size: int = -1) -> bytes:
        raise io.UnsupportedOperation("read")

    def write(self, data: bytes) -> int:
        raise io.UnsupportedOperation("write")

    def tell(self) -> int:
        raise io.UnsupportedOperation("tell")

    def seek(self, position: int) -> int:
        raise io.UnsupportedOperation("seek")

    def close(self) -> None:
        pass


class _ToGuest(_Stream):
    """A write-only file whose bytes go to the guest in chunks: through the data PORT, or
    else to the open guest file HANDLE through the agent."""

    def __init__(
        self,
        agent: Agent,
        deadline: float,
        meter: copying.Meter,
        port: dataport.Sink | None,
        handle: int | None,
    ):
        self.agent, self.deadline, self.meter = agent, deadline, meter
        self.port, self.handle = port, handle
        self.chunk = agent.write_chunk if port is None else dataport.CHUNK
        self.buffer = bytearray()
        self.sent = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) >= self.chunk:
            self._send(bytes(self.buffer[: self.chunk]))
            del self.buffer[: self.chunk]
        return len(data)

    def _send(self, chunk: bytes) -> None:
        if self.port is not None:
            self.port.write(chunk)
        else:
            assert self.handle is not None  # one of the two ways is open
            self.agent.write(self.handle, chunk)
        self.sent += len(chunk)
        self.meter.update(self.sent)
        copying._check_deadline(self.deadline, self.meter.what)

    def finish(self) -> None:
        if self.buffer:
            self._send(bytes(self.buffer))
            self.buffer.clear()
        if self.port is not None:
            self.port.finish()
        else:
            assert self.handle is not None
            self.agent.flush(self.handle)


class _FromGuest(_Stream):
    """A read-only file over an open guest file, bounded like a ``copy`` out of one."""

    def __init__(self, agent: Agent, source: str, handle: int, max_size: int | None):
        self.agent, self.source, self.handle = agent, source, handle
        self.limit, self.known = copying.opened_size(agent, source, handle, max_size)
        self.got = 0
        self.ended = False
        self.deadline = 0.0
        self.meter = copying.Meter(source, self.limit if self.known else None)

    def read(self, size: int = -1) -> bytes:
        if self.ended or (self.known and self.got >= self.limit):
            return b""
        room = self.limit - self.got + (0 if self.known else 1)
        data, eof = self.agent.read(self.handle, min(self.agent.read_chunk, room))
        if self.got + len(data) > self.limit:
            raise ClanVMError(
                f"the archive of '{self.source}' from VM '{self.agent.name}' is larger than "
                f"{self.limit} bytes; nothing was copied (--max-size BYTES allows more)"
            )
        self.got += len(data)
        self.ended = eof or not data
        self.meter.update(self.got)
        copying._check_deadline(self.deadline, self.meter.what)
        return data


# --- into the guest ------------------------------------------------------------------------------


def _pack(tar: tarfile.TarFile, dir_fd: int, prefix: str, warn: Notify) -> None:
    """Add what the directory DIR_FD holds (depth first, by name), as PREFIX/NAME."""
    for entry in sorted(os.listdir(dir_fd)):
        info = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
        member = tarfile.TarInfo(f"{prefix}{entry}")
        member.mode = stat.S_IMODE(info.st_mode)
        member.mtime = int(info.st_mtime)
        if stat.S_ISLNK(info.st_mode):
            member.type = tarfile.SYMTYPE
            member.linkname = os.readlink(entry, dir_fd=dir_fd)
            tar.addfile(member)
        elif stat.S_ISDIR(info.st_mode):
            member.type = tarfile.DIRTYPE
            tar.addfile(member)
            child = os.open(entry, DIR_FLAGS, dir_fd=dir_fd)
            try:
                _pack(tar, child, f"{member.name}/", warn)
            finally:
                os.close(child)
        elif stat.S_ISREG(info.st_mode):
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as data:
                member.size = os.fstat(fd).st_size
                tar.addfile(member, data)
        elif stat.S_ISFIFO(info.st_mode):
            member.type = tarfile.FIFOTYPE
            tar.addfile(member)
        else:
            warn(f"warning: {prefix}{entry} is a device or socket: not copied")


def copy_tree_in(
    store: Store,
    name: str,
    source: Path,
    target: str,
    *,
    timeout: float = copying.TIMEOUT,
    wait: float = guest.AGENT_WAIT,
    warn: Notify = notice,
) -> copying.Copied:
    """Copy the host directory SOURCE to TARGET in the guest (into it, if it is a
    directory). TARGET appears only once all is there."""
    deadline = time.monotonic() + timeout
    top = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        mode = f"{stat.S_IMODE(os.fstat(top).st_mode):o}"
        with (
            session(store, name, wait) as agent,
            interruptible(),
            guest_temp.recorded(agent, *copying.beside(target)) as made,
        ):
            final, temporary = copying.place(agent, target, source.name, "d", made.template("copy"))
            meter = copying.Meter(f"{source} to {name}:{final}", None)
            try:
                archive = f"{temporary}/archive.tar"
                with dataport.to_file(agent, archive, deadline) as port:
                    handle = None if port else made.holds(agent.open(archive, "w"))
                    try:
                        out = _ToGuest(agent, deadline, meter, port, handle)
                        with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:
                            _pack(tar, top, "", warn)
                        out.finish()
                    finally:
                        if handle is not None:
                            agent.close(handle)
                copying._guest_script(agent, UNPACK, [temporary, final, mode], f"copy to {final}")
            finally:
                meter.done()
    finally:
        os.close(top)
    return copying.Copied(out.sent, final)


# --- out of the guest ----------------------------------------------------------------------------


class _Outside(Exception):
    """An archive entry whose name (or link) would leave the tree."""


def _parts(name: str) -> tuple[str, ...]:
    """The components of an archive entry's name; _Outside for one that would leave the
    tree (absolute, or with '..')."""
    path = PurePosixPath(name)
    parts = tuple(p for p in path.parts if p != ".")
    if path.is_absolute() or ".." in parts or any("\0" in p for p in parts):
        raise _Outside(name)
    return parts


@contextlib.contextmanager
def _directory(root: int, parts: tuple[str, ...]) -> Iterator[int]:
    """The directory PARTS below ROOT, opened one component at a time, never through a
    link (a missing one is made)."""
    fd = os.dup(root)
    try:
        for part in parts:
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o700, dir_fd=fd)
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _unpack_one(
    tar: tarfile.TarFile, member: tarfile.TarInfo, root: int, modes: list[Callable[[], None]]
) -> str | None:
    """Make MEMBER below ROOT; what was skipped, or None."""
    parts = _parts(member.name)
    mode = stat.S_IMODE(member.mode) & 0o777  # no setuid, setgid or sticky bit from a guest
    if not parts:
        modes.append(lambda: os.fchmod(root, mode))
        return None
    with _directory(root, parts[:-1]) as parent:
        leaf = parts[-1]
        if member.isdir():
            try:
                os.mkdir(leaf, 0o700, dir_fd=parent)
            except FileExistsError:  # made already as the parent of an earlier entry
                if not stat.S_ISDIR(os.stat(leaf, dir_fd=parent, follow_symlinks=False).st_mode):
                    raise

            def later(parts: tuple[str, ...] = parts) -> None:
                with _directory(root, parts) as fd:
                    os.fchmod(fd, mode)

            modes.append(later)
        elif member.isreg():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(leaf, flags, 0o600, dir_fd=parent)
            with os.fdopen(fd, "wb") as out:
                data = tar.extractfile(member)
                assert data is not None
                while chunk := data.read(1 << 20):
                    out.write(chunk)
                os.fchmod(fd, mode)
        elif member.issym():
            os.symlink(member.linkname, leaf, dir_fd=parent)
        elif member.islnk():
            linked = _parts(member.linkname)
            if not linked:
                raise _Outside(member.linkname)
            with _directory(root, linked[:-1]) as source:
                os.link(
                    linked[-1], leaf, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False
                )
        elif member.isfifo():
            os.mkfifo(leaf, mode, dir_fd=parent)
        else:
            return member.name
    return None


def _unpack(stream: _FromGuest, root: int, warn: Notify) -> None:
    modes: list[Callable[[], None]] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                skipped = _unpack_one(tar, member, root, modes)
                if skipped:
                    warn(f"warning: {printable(skipped)} is a device: not copied")
    except _Outside as error:
        raise ClanVMError(
            f"VM '{stream.agent.name}' sent an archive of '{stream.source}' that names "
            f"{printable(str(error))!r}, outside the tree; nothing was copied"
        ) from None
    except (tarfile.TarError, EOFError, UnicodeError) as error:
        raise ClanVMError(
            f"VM '{stream.agent.name}' sent an invalid archive of '{stream.source}': "
            f"{printable(str(error))}"
        ) from None
    except FileExistsError as error:
        raise ClanVMError(
            f"the archive of '{stream.source}' from VM '{stream.agent.name}' names "
            f"{printable(str(error.filename))!r} twice"
        ) from None
    except OSError as error:  # e.g. a path through a link it made: never followed
        raise ClanVMError(
            f"the archive of '{stream.source}' from VM '{stream.agent.name}' could not be "
            f"unpacked here: {printable(str(error))}"
        ) from None
    for apply in reversed(modes):  # deepest first: a directory made read-only is full by now
        apply()


def copy_tree_out(
    store: Store,
    name: str,
    source: str,
    target: Path,
    *,
    max_size: int | None = None,
    timeout: float = copying.TIMEOUT,
    wait: float = guest.AGENT_WAIT,
    warn: Notify = notice,
) -> copying.Copied | None:
    """Copy the guest directory SOURCE to the host directory TARGET (into it, if it exists);
    None when SOURCE is no directory. TARGET appears only whole."""
    if target.is_dir():
        target = target / PurePosixPath(source).name
    if os.path.lexists(target):
        raise InvalidInput(f"{target} exists; copy -r does not merge into or replace it")
    if not target.parent.is_dir():
        raise InvalidInput(f"there is no directory {target.parent}")
    with (
        session(store, name, wait) as agent,
        interruptible(),
        guest_temp.recorded(agent, "/tmp") as made,
    ):
        try:
            packed = [source, made.template("archive")]
            out = copying._guest_script(agent, PACK, packed, f"copy of {source}")
        except InvalidInput:
            return None  # no directory (nothing made): the caller copies it as a file
        archive = out.split("\n")[0]
        try:
            handle = made.holds(agent.open(archive, "r"))
            try:
                stream = _FromGuest(agent, source, handle, max_size)
                stream.deadline = time.monotonic() + timeout
                stream.meter.what = f"{name}:{source} to {target}"
                with partials.partial(store.root, target, directory=True) as part:
                    try:
                        _unpack(stream, part.fd, warn)
                    finally:
                        stream.meter.done()
                    part.commit()
            finally:
                agent.close(handle)
        finally:
            made.remove()
    return copying.Copied(stream.got, str(target))
