"""The tasks that reach into a running guest: exec, copy, ssh."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.names import check_name
from clan_vm_tasks.render import notice
from clan_vm_tasks.tasks.common import NAME_HELP, after_double_dash, number, open_store, vm_task

if TYPE_CHECKING:
    from invoke.context import Context

_REMOTE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]*):(/.*)")
TRUNCATED = (
    "warning: the guest agent cut the command's output (it keeps at most 16 MiB of each "
    "stream); redirect it to a file in the guest and copy that file out"
)


@vm_task(
    name="exec",
    after_dashes="-- CMD [ARG...]",
    examples=["exec web -- uname -a", "exec web --timeout 300 -- nixos-rebuild switch"],
    help={"name": NAME_HELP, "timeout": "seconds the command may run (default 60)"},
)
def exec_(c: Context, name: str, timeout: str | None = None) -> None:
    """Run a command in a running guest, through its agent.

    Run a command in the guest through its agent: exec NAME -- CMD [ARG...]; its output and
    exit code become ours."""
    from clan_vm_tasks.vm import guest

    check_name(name)
    argv = after_double_dash()
    if not argv:
        raise InvalidInput(f"exec needs a command: clan-vm-manager exec {name} -- CMD [ARG...]")
    seconds = number(timeout, "timeout", 60, float)
    store, _ = open_store(create=False)
    result = guest.execute(store, name, argv, seconds)
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
    examples=["copy notes.txt web:/root/", "copy web:/var/log/messages ."],
    help={
        "source": "a host file, or NAME:/PATH in the guest",
        "target": "NAME:/PATH in the guest, or a host file or directory",
    },
)
def copy(c: Context, source: str, target: str) -> None:
    """Copy a file into or out of a running guest.

    Copy one file into or out of a running guest through its agent (exactly one side is
    NAME:/PATH). Bytes and, into the guest, the permission bits are copied (with chmod in the
    guest); owner, times and extended attributes are not."""
    from clan_vm_tasks.vm import guest

    into, out_of = _REMOTE.fullmatch(target), _REMOTE.fullmatch(source)
    if bool(into) == bool(out_of):
        raise InvalidInput("copy needs exactly one side written as NAME:/PATH (a guest path)")
    store, _ = open_store(create=False)
    if into:
        name, path = check_name(into.group(1)), into.group(2)
        local = Path(source)
        if not local.is_file():
            raise InvalidInput(f"{source} is not a file")
        if path.endswith("/"):
            path += local.name
        size = guest.copy_in(store, name, local, path)
        notice(f"copied {size} bytes to {name}:{path}")
        return
    assert out_of is not None
    name, path = check_name(out_of.group(1)), out_of.group(2)
    local = Path(target)
    if local.is_dir():
        local = local / Path(path).name
    size = guest.copy_out(store, name, path, local)
    notice(f"copied {size} bytes to {local}")


@vm_task(
    help={"name": NAME_HELP, "user": "the guest user (default: the VM's sshUser, root)"},
    after_dashes="[-- CMD...]",
    examples=["ssh web", "ssh web --user alice -- uptime"],
)
def ssh(c: Context, name: str, user: str | None = None) -> None:
    """Open SSH to a running guest, with a key of the VM's own.

    Open SSH to the guest (ssh NAME [-- CMD...]) with a key of the VM's own, installed and
    the host key pinned through the guest agent."""
    from clan_vm_tasks.vm import ssh as vm_ssh

    check_name(name)
    store, _ = open_store(create=False)
    chosen = user or str(store.read_config(name).get("ssh_user") or "root")
    argv = vm_ssh.command(store, name, chosen, after_double_dash())
    sys.stdout.flush()
    os.execv(argv[0], argv)  # ssh owns the terminal from here (no shell in between)
