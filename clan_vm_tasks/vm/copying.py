"""``copy``: files into and out of a running guest through its agent, in chunks that fit the
backend's way to the agent.

Nothing is ever left half-written at a destination: a copy out is written to a partial file
next to its destination (``state.partials``: exclusive, never through a planted link) and
renamed into place at the end; a copy in is written to a temporary file next to its
destination in the guest and renamed there by the guest's ``mv``. The guest is not trusted:
what it sends is bounded by the size it reported when the file was opened (or
``max_size``), by a deadline per read and by ``timeout`` overall.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from clan_vm_tasks.backends.agent_wire import printable
from clan_vm_tasks.errors import ClanVMError, InvalidInput
from clan_vm_tasks.render import progress
from clan_vm_tasks.state import partials
from clan_vm_tasks.state.store import Store
from clan_vm_tasks.vm import dataport, guest, guest_temp
from clan_vm_tasks.vm.agent import Agent, session
from clan_vm_tasks.vm.signals import interruptible

UNKNOWN_SIZE_LIMIT = 64 << 20  # for a file whose size the guest cannot tell (/proc, a device)
TIMEOUT = 3600.0  # seconds a whole copy may take unless told otherwise
PROGRESS_AFTER = 2.0  # seconds before a copy shows a progress line (on a terminal)
SCRIPT_TIMEOUT = 60.0

# Run by the guest's shell: where a copy of the host's $2 (kind $3: f a file, d a tree) to $1
# goes (into $1 when that is a directory, as with cp), and a new temporary name beside it
# (made from the template $4: in $1 or in its parent, the directories ``guest_temp`` records).
PLACE = r"""t=$1
if [ -d "$t" ]; then t="${t%/}/$2"; fi
if [ "$3" = d ] && { [ -e "$t" ] || [ -L "$t" ]; }; then echo "$t exists" >&2; exit 3; fi
if [ "$3" = f ] && [ -d "$t" ]; then echo "$t is a directory" >&2; exit 3; fi
d=${t%/*}; [ -n "$d" ] || d=/
[ -d "$d" ] || { echo "there is no directory $d" >&2; exit 3; }
if [ "$3" = d ]; then tmp=$(mktemp -d "$d/$4") || exit 4
else tmp=$(mktemp "$d/$4") || exit 4; fi
printf '%s\n%s\n' "$t" "$tmp"
"""
# The temporary file $1 becomes $2 with mode $3 (a guest without chmod keeps the agent's).
FINISH_FILE = r"""chmod "$3" "$1" 2>/dev/null; mv -f -T -- "$1" "$2"
"""


@dataclass(frozen=True)
class Copied:
    size: int  # bytes copied (of a tree: of its archive)
    to: str  # where they went: the destination as resolved (into a directory it names)


@dataclass
class Meter:
    """A progress line on a terminal for a copy that takes more than a few seconds."""

    what: str
    total: int | None
    began: float = 0.0
    shown: float = 0.0

    def __post_init__(self) -> None:
        self.began = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.began < PROGRESS_AFTER or now - self.shown < 0.2:
            return
        line = progress()
        if not self.shown:
            line.phase("copying")
        self.shown = now
        rate = done / max(now - self.began, 1e-3)
        of = f" of {_mib(self.total)} ({done * 100 // self.total}%)" if self.total else ""
        line.detail(f"{_mib(done)}{of}, {_mib(int(rate))}/s: {self.what}")

    def done(self) -> None:
        if self.shown:
            progress().done()


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _guest_script(agent: Agent, script: str, args: list[str], what: str) -> str:
    """Run SCRIPT (sh -c) in the guest; its output. Exit code 3 is a wrong destination."""
    ran = guest.run(agent, ["/bin/sh", "-c", script, "sh", *args], SCRIPT_TIMEOUT)
    if ran.exit_code == 0:
        return ran.stdout.decode(errors="replace")
    lines = ran.stderr.decode(errors="replace").strip().splitlines()
    why = printable(lines[-1]) if lines else f"exit code {ran.exit_code}"
    if ran.exit_code == 3:
        raise InvalidInput(f"{what} in VM '{agent.name}': {why}")
    raise ClanVMError(f"{what} failed in VM '{agent.name}': {why}")


def place(agent: Agent, target: str, source_name: str, kind: str, template: str) -> tuple[str, str]:
    """(where the copy goes, a new temporary name beside it, from TEMPLATE) in the guest."""
    out = _guest_script(agent, PLACE, [target, source_name, kind, template], f"copy to {target}")
    lines = out.split("\n")
    if len(lines) < 2 or not lines[0].startswith("/") or not lines[1].startswith("/"):
        raise ClanVMError(f"VM '{agent.name}' could not say where {target} is")
    return lines[0], lines[1]


def beside(target: str) -> tuple[str, str]:
    """Where PLACE may make the temporary file of a copy to TARGET (an absolute guest path):
    in TARGET, if that is a directory, else in its parent."""
    parent = target.rstrip("/").rpartition("/")[0] or "/"
    return target, parent


def send(
    agent: Agent, made: guest_temp.Temporary, path: str, fd: int, deadline: float, meter: Meter
) -> int:
    """Write what FD holds to PATH in the guest (MADE there already); the bytes sent. Through
    the data port where there is one, else through the agent."""
    with dataport.to_file(agent, path, deadline) as port:
        if port is not None:
            while chunk := os.read(fd, dataport.CHUNK):
                port.write(chunk)
                meter.update(port.sent)
                _check_deadline(deadline, meter.what)
            return port.finish()
    handle = made.holds(agent.open(path, "w"))
    sent = 0
    try:
        while chunk := os.read(fd, agent.write_chunk):
            agent.write(handle, chunk)
            sent += len(chunk)
            meter.update(sent)
            _check_deadline(deadline, meter.what)
        agent.flush(handle)
    finally:
        agent.close(handle)
    return sent


def copy_in(
    store: Store,
    name: str,
    source: Path,
    target: str,
    *,
    timeout: float = TIMEOUT,
    wait: float = guest.AGENT_WAIT,
) -> Copied:
    """Copy the host file SOURCE to TARGET in the guest (into it, if it is a directory), with
    SOURCE's permission bits. TARGET changes only once all is there."""
    deadline = time.monotonic() + timeout
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        with (
            session(store, name, wait) as agent,
            interruptible(),
            guest_temp.recorded(agent, *beside(target)) as made,
        ):
            final, temporary = place(agent, target, source.name, "f", made.template("copy"))
            meter = Meter(f"{source} to {name}:{final}", info.st_size)
            try:
                sent = send(agent, made, temporary, fd, deadline, meter)
                mode = f"{info.st_mode & 0o7777:o}"
                _guest_script(agent, FINISH_FILE, [temporary, final, mode], f"copy to {final}")
            finally:
                meter.done()
    finally:
        os.close(fd)
    return Copied(sent, final)


def _check_deadline(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise ClanVMError(f"copying {what} took longer than --timeout allows; nothing was copied")


def receive(
    agent: Agent,
    source: str,
    fd: int,
    limit: int,
    known: bool,
    deadline: float,
    meter: Meter,
    handle: int,
) -> int:
    """Read the open guest file HANDLE into FD up to LIMIT bytes: where a KNOWN size ends the
    copy stops; past an unknown one's limit it is an error. The bytes written."""
    got = 0
    while got < limit or not known:
        want = min(agent.read_chunk, limit - got + (0 if known else 1))
        data, eof = agent.read(handle, want)
        if got + len(data) > limit:
            raise ClanVMError(
                f"'{source}' in VM '{agent.name}' is larger than {limit} bytes, or a file whose "
                f"size the guest cannot tell (a device, a pipe); nothing was copied "
                "(--max-size BYTES copies up to that much)"
            )
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        got += len(data)
        meter.update(got)
        if eof or not data:
            break
        _check_deadline(deadline, meter.what)
    return got


def opened_size(agent: Agent, source: str, handle: int, max_size: int | None) -> tuple[int, bool]:
    """(the limit of what may be read, whether it is the file's own size)."""
    size = agent.size(handle)
    if size:
        if max_size is not None and size > max_size:
            raise ClanVMError(
                f"'{source}' in VM '{agent.name}' is {size} bytes, more than --max-size "
                f"{max_size}; nothing was copied"
            )
        return size, True
    return (UNKNOWN_SIZE_LIMIT if max_size is None else max_size), False


def copy_out(
    store: Store,
    name: str,
    source: str,
    target: Path,
    *,
    max_size: int | None = None,
    timeout: float = TIMEOUT,
    wait: float = guest.AGENT_WAIT,
) -> Copied:
    """Copy SOURCE in the guest to the host file TARGET (into it, if it is a directory),
    written whole or not at all."""
    if target.is_dir():
        target = target / Path(source).name
    if not target.parent.is_dir():
        raise InvalidInput(f"there is no directory {target.parent}")
    deadline = time.monotonic() + timeout
    with (
        session(store, name, wait) as agent,
        interruptible(),
        guest_temp.recorded(agent) as opened,  # its handle, closed by the next session if killed
    ):
        handle = opened.holds(agent.open(source, "r"))
        try:
            limit, known = opened_size(agent, source, handle, max_size)
            meter = Meter(f"{name}:{source} to {target}", limit if known else None)
            with partials.partial(store.root, target) as part:
                try:
                    got = receive(agent, source, part.fd, limit, known, deadline, meter, handle)
                finally:
                    meter.done()
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(part.fd, 0o666 & ~umask)  # as a file made by cp would be
                part.commit()
        finally:
            agent.close(handle)
    return Copied(got, str(target))
