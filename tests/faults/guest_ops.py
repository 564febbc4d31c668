"""The operations that reach into a running guest (``exec``, ``copy`` out and in, ``ssh``
with its key install), as fault scenarios: their setup, what must hold after a kill, their
follow-ups.

They record no history event; what a kill must never leave is a half-written file at the
copy's destination (a partial the next command does not remove, or a copy in the guest that
is not the host's file), a temporary file in the state directory or, once the next command
worked in the guest, in the guest, or an agent or a guest the next command cannot use.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tests.faults.runner import Runner

GUEST_FILE = "/root/blob"
BLOB_BYTES = 3_000_000  # three chunks: a kill can land between them
COPY_TARGET = "copied.bin"  # in the runner's working directory
COPY_SOURCE = "sent.bin"  # in the runner's working directory: copied into the guest's /root
MULTI_USER = "- Multi-User System."


class GuestFiles(Protocol):
    @property
    def kernel(self) -> Path: ...

    @property
    def initrd(self) -> Path: ...


def argv(kind: str, name: str) -> list[str]:
    if kind == "exec":
        return ["exec", name, "--", "sh", "-c", "echo ran; sleep 1"]
    if kind == "copy-out":
        return ["copy", f"{name}:{GUEST_FILE}", COPY_TARGET]
    if kind == "copy-in":
        return ["copy", COPY_SOURCE, f"{name}:/root/"]
    return ["ssh", name, "--", "true"]


def setup(runner: Runner, kind: str, name: str, create: Callable[[], None]) -> None:
    """A running guest whose agent answers (the Debian guest, with sshd, for ``ssh``)."""
    if kind == "ssh":
        from tests.guests.debian import ensure_image

        image = ensure_image()
        runner.ok(
            "create", name, "--from-image", str(image.disk), "--kernel", str(image.kernel),
            "--initrd", str(image.initrd), "--append", image.append, "--cpus", "2",
            "--memory", "512", "--forward", "tcp:auto:22",
        )  # fmt: skip
        runner.ok("start", name, "--wait-for", MULTI_USER, "--wait-for-agent", "--timeout", "240")
        return
    create()
    runner.ok("start", name, "--wait-for", "clan-guest: READY", "--wait-for-agent")
    if kind == "copy-out":
        line = f"head -c {BLOB_BYTES} /dev/urandom > {GUEST_FILE}"
        runner.ok("exec", name, "--", "sh", "-c", line)
    if kind == "copy-in":
        (runner.cwd / COPY_SOURCE).write_bytes(os.urandom(BLOB_BYTES))


def partials(runner: Runner) -> list[str]:
    """Partial files at the copy's destination and records of them in the state directory."""
    found = [p.name for p in runner.cwd.glob(".*.partial")]
    records = runner.state_dir / "partials"
    found += [f"partials/{p.name}" for p in records.iterdir()] if records.is_dir() else []
    return found


def check_after(runner: Runner, kind: str, name: str) -> list[str]:
    """4. Once a command ran after the kill: no partial left, and a copy that arrived is
    whole (the guest's file, byte for byte)."""
    problems = []
    left = partials(runner)
    if left:
        problems.append(f"partial files left after the next command: {left}")
    if kind == "copy-in":
        problems += _copied_in(runner, name)
    target = runner.cwd / COPY_TARGET
    if kind == "copy-out" and target.exists():
        copied = hashlib.sha256(target.read_bytes()).hexdigest()
        result = runner.run("exec", name, "--", "sha256sum", GUEST_FILE)
        if result.code != 0 or result.out.split()[:1] != [copied]:
            problems.append(
                f"{COPY_TARGET} ({target.stat().st_size} bytes) is not the guest's "
                f"{GUEST_FILE}: {result.line() if result.code else result.out.strip()}"
            )
    return problems


def _copied_in(runner: Runner, name: str) -> list[str]:
    """The next command in the guest (this exec) removed the killed copy's temporary file,
    and a copy that arrived is the host's file."""
    listed = runner.run("exec", name, "--", "ls", "-A", "/root")
    if listed.code != 0:
        return [f"the guest's /root cannot be listed: {listed.line()}"]
    problems = []
    left = [entry for entry in listed.out.split() if entry.startswith(".clan-vm-")]
    if left:
        problems.append(f"temporary files left in the guest's /root: {left}")
    if COPY_SOURCE in listed.out.split():
        sent = hashlib.sha256((runner.cwd / COPY_SOURCE).read_bytes()).hexdigest()
        summed = runner.run("exec", name, "--", "sha256sum", f"/root/{COPY_SOURCE}")
        if summed.code != 0 or summed.out.split()[:1] != [sent]:
            problems.append(f"/root/{COPY_SOURCE} in the guest is not the host's {COPY_SOURCE}")
    records = runner.state_dir / "vms" / name / "guest-temp"
    if records.is_dir() and any(records.iterdir()):
        problems.append(f"records of guest files left: {sorted(os.listdir(records))}")
    return problems


def follow_up(must: Callable[..., bool], kind: str, name: str) -> None:
    """The natural next commands: the same again (the agent, the key, the connection are
    usable), then a stop."""
    if must(*argv(kind, name)):
        must("stop", name, "--force")
