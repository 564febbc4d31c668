"""The tasks that reach into a running guest: exec, copy, ssh."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.names import check_name
from clan_vm_tasks.render import notice, show_progress
from clan_vm_tasks.tasks.common import NAME_HELP, after_double_dash, number, open_store, vm_task

if TYPE_CHECKING:
    from invoke.context import Context

_REMOTE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]*):(/.*)")
_SIZE = re.compile(r"([0-9]+)([KMGT]?)(i?B)?", re.IGNORECASE)
MAX_SECONDS = 2**31 - 1  # what every platform's time_t holds
SHELLS = {"sh", "bash", "zsh", "fish", "dash", "ash", "ksh", "csh", "tcsh"}
TRUNCATED = (
    "warning: the guest agent cut the command's output (it keeps at most 16 MiB of each "
    "stream); redirect it to a file in the guest and copy that file out"
)
NO_TTY = (
    "exec has no terminal: the guest agent cannot give one; for an interactive shell use "
    "clan-vm-manager ssh {name} (a guest with sshd) or clan-vm-manager console {name}"
)


def seconds(value: str | None, option: str, default: float) -> float:
    """A positive number of seconds that the platform's clocks can wait for."""
    parsed: float = number(value, option, default, float)
    if parsed > MAX_SECONDS:
        raise InvalidInput(f"--{option} must be at most {MAX_SECONDS} seconds, not {value}")
    return parsed


def size(value: str | None) -> int | None:
    """Bytes, with an optional K, M, G or T suffix (powers of 1024)."""
    if value is None:
        return None
    found = _SIZE.fullmatch(str(value))
    if not found or int(found.group(1)) <= 0:
        raise InvalidInput(f"--max-size must be a positive size like 500M or 2G, not {value!r}")
    return int(found.group(1)) << (10 * " KMGT".index(found.group(2).upper() or " "))


def _stdin() -> BinaryIO | None:
    """The input for the guest command: ours, unless it is a terminal (or closed), as a
    command run by ssh gets it."""
    try:
        if os.isatty(0):
            return None
        os.fstat(0)
    except OSError:
        return None
    return sys.stdin.buffer


@vm_task(
    name="exec",
    after_dashes="-- CMD [ARG...]",
    examples=["exec web -- uname -a", "exec web --timeout 300 -- nixos-rebuild switch"],
    help={
        "name": NAME_HELP,
        "timeout": "seconds the command may run, and the guest agent may take to answer after "
        "a boot (default 60)",
        "tty": "(refused: the guest agent gives no terminal; use ssh or console)",
    },
)
def exec_(c: Context, name: str, timeout: str | None = None, tty: bool = False) -> None:
    """Run a command in a running guest, through its agent.

    Run a command in the guest through its agent: exec NAME -- CMD [ARG...]; input that is
    not a terminal reaches it, its output and exit code become ours."""
    from clan_vm_tasks.vm import guest

    check_name(name)
    argv = after_double_dash()
    if tty:
        raise InvalidInput(NO_TTY.format(name=name))
    if not argv:
        raise InvalidInput(f"exec needs a command: clan-vm-manager exec {name} -- CMD [ARG...]")
    limit = seconds(timeout, "timeout", 60)
    store, _ = open_store(create=False)
    stdin = _stdin()
    if stdin is None and os.isatty(0) and len(argv) == 1 and Path(argv[0]).name in SHELLS:
        notice(f"warning: {NO_TTY.format(name=name)}; the shell gets no input")
    result = guest.execute(store, name, argv, limit, stdin=stdin)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()
    if result.truncated:
        notice(TRUNCATED)
    if result.exit_code:
        raise SystemExit(result.exit_code)


@vm_task(
    positional=["source", "target"],
    shortflags={"recursive": "r"},
    examples=["copy notes.txt web:/root/", "copy -r web:/etc/nixos ./nixos"],
    help={
        "source": "a host file (or directory, with -r), or NAME:/PATH in the guest",
        "target": "NAME:/PATH in the guest, or a host path; an existing directory receives it",
        "recursive": "copy a directory tree (modes kept, symlinks copied as links)",
        "max_size": "at most this much from the guest (e.g. 500M, 2G; default: the size the "
        "guest reports, 64M for a file whose size it cannot tell)",
        "timeout": "seconds the whole copy may take (default 3600)",
    },
)
def copy(
    c: Context,
    source: str,
    target: str,
    recursive: bool = False,
    max_size: str | None = None,
    timeout: str | None = None,
) -> None:
    """Copy files into or out of a running guest.

    Copy files into or out of a running guest through its agent (exactly one side is
    NAME:/PATH); -r for directory trees. The destination appears only complete."""
    from clan_vm_tasks.vm import copying, trees

    into, out_of = _REMOTE.fullmatch(target), _REMOTE.fullmatch(source)
    if bool(into) == bool(out_of):
        raise InvalidInput("copy needs exactly one side written as NAME:/PATH (a guest path)")
    limit, most = seconds(timeout, "timeout", copying.TIMEOUT), size(max_size)
    store, _ = open_store(create=False)
    show_progress(quiet=False)
    if into:
        name, path = check_name(into.group(1)), into.group(2)
        local = Path(source)
        if local.is_dir() and recursive:
            tree = trees.copy_tree_in(store, name, local, path, timeout=limit)
            notice(f"copied {source} to {name}:{tree.to} ({tree.size} bytes of archive)")
            return
        if not local.is_file():
            why = "a directory (copy -r copies trees)" if local.is_dir() else "not a file"
            raise InvalidInput(f"{source} is {why}")
        if path.endswith("/"):
            path += local.name
        copied = copying.copy_in(store, name, local, path, timeout=limit)
        notice(f"copied {copied.size} bytes to {name}:{copied.to}")
        return
    assert out_of is not None
    name, path = check_name(out_of.group(1)), out_of.group(2)
    local = Path(target)
    if recursive:
        out = trees.copy_tree_out(store, name, path, local, max_size=most, timeout=limit)
        if out is not None:
            notice(f"copied {name}:{path} to {out.to} ({out.size} bytes of archive)")
            return
    copied = copying.copy_out(store, name, path, local, max_size=most, timeout=limit)
    notice(f"copied {copied.size} bytes to {copied.to}")


@vm_task(
    help={
        "name": NAME_HELP,
        "user": "the guest user (default: the VM's sshUser, root)",
        "timeout": "seconds to wait for the guest agent and the guest's sshd (default 60)",
    },
    after_dashes="[-- CMD...]",
    examples=["ssh web", "ssh web --user alice -- uptime"],
)
def ssh(c: Context, name: str, user: str | None = None, timeout: str | None = None) -> None:
    """Open SSH to a running guest, with a key of the VM's own.

    Open SSH to the guest (ssh NAME [-- CMD...]) with a key of the VM's own, installed and
    the host key pinned through the guest agent; later calls reuse the connection."""
    from clan_vm_tasks.vm import ssh as vm_ssh

    check_name(name)
    limit = seconds(timeout, "timeout", 60)
    remote = after_double_dash()
    store, _ = open_store(create=False)
    store.require(name)
    chosen = user or str(store.read_config(name).get("ssh_user") or "root")
    argv = vm_ssh.command(store, name, chosen, remote, limit)
    sys.stdout.flush()
    os.execv(argv[0], argv)  # ssh owns the terminal from here (no shell in between)
