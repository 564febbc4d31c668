"""``clan-vm-manager``: an invoke Program over the task collection."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from invoke.collection import Collection
from invoke.exceptions import ParseError
from invoke.program import Program

from clan_vm_tasks import __version__, tasks

HELP_FLAGS = ("--help", "-h")


def collection() -> Collection:
    return Collection.from_module(tasks)


class VMProgram(Program):
    """invoke's Program, but a command-line mistake is an ``error:`` line and exit code 2."""

    def parse_core(self, argv: list[str] | None) -> None:
        with _usage_errors():
            super().parse_core(argv)

    def parse_tasks(self) -> None:
        with _usage_errors():
            super().parse_tasks()


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    try:
        yield
    except ParseError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def normalise(argv: list[str]) -> list[str]:
    """Let ``TASK --help`` mean ``--help TASK``: invoke would take --help as TASK's argument."""
    from clan_vm_tasks.nix_tasks import expand_names

    argv = expand_names(argv)
    args = argv[1:]
    names = set(collection().task_names)
    for i, arg in enumerate(args):
        if arg in names:
            if any(a in HELP_FLAGS for a in args[i + 1 :]):
                return [argv[0], *args[:i], "--help", arg]
            break
    return argv


def main(argv: list[str] | None = None) -> None:
    program = VMProgram(
        name="clan-vm-manager",
        binary="clan-vm-manager",
        version=__version__,
        namespace=collection(),
    )
    try:
        program.run(normalise(list(sys.argv if argv is None else argv)))
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:
        if os.environ.get("CLAN_VM_DEBUG"):
            raise
        print(f"error: internal error: {error!r} (CLAN_VM_DEBUG=1 shows where)", file=sys.stderr)
        sys.exit(1)
