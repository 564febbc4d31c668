"""``clan-vm-manager``: an invoke Program over the task collection."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from invoke.collection import Collection
from invoke.exceptions import ParseError
from invoke.parser import Parser
from invoke.parser.context import ParserContext
from invoke.program import Program

from clan_vm_tasks import __version__, tasks
from clan_vm_tasks.tasks import common

HELP_FLAGS = ("--help", "-h")
# Tasks whose VM names may also be given as bare words (clan-vm-manager build web db), with
# the options of theirs that take a value.
NAMED_TASKS = {
    "eval": ("--flake", "--override-input"),
    "build": ("--flake", "--override-input"),
    "boot-test": ("--flake", "--timeout", "--expect", "--junit", "--check", "--override-input"),
}
OVERRIDE = "--override-input"


def collection() -> Collection:
    return tasks.ns


class VMProgram(Program):
    """invoke's Program, but a command-line mistake is an ``error:`` line and exit code 2."""

    _words: set[str] | None = None

    def parse_core(self, argv: list[str] | None) -> None:
        with _usage_errors():
            super().parse_core(argv)

    def parse_tasks(self) -> None:
        self._words = set(self.argv)
        try:
            with _usage_errors():
                super().parse_tasks()
        finally:
            self._words = None

    def _make_parser(self) -> Parser:
        """For the command line, a parser of only the tasks it names: invoke's parser copies
        every task's arguments, which costs ``list`` more than the listing. Help and
        completion get every task."""
        if self._words is None:
            return super()._make_parser()
        words, unknown_help = self._words, self.config.tasks.ignore_unknown_help
        contexts = [
            ParserContext(
                name=name,
                aliases=aliases,
                args=self.collection[name].get_arguments(ignore_unknown_help=unknown_help),
            )
            for name, aliases in self.collection.task_names.items()
            if name in words or words.intersection(aliases)
        ]
        return Parser(initial=self.initial_context, contexts=contexts)


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    try:
        yield
    except ParseError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def expand_names(argv: list[str]) -> list[str]:
    """``TASK a b`` -> ``TASK --vm a --vm b`` (invoke has no variadic positionals)."""
    for i, arg in enumerate(argv):
        if arg in NAMED_TASKS:
            takes_value = NAMED_TASKS[arg]
            out, rest = argv[: i + 1], argv[i + 1 :]
            j = 0
            while j < len(rest):
                word = rest[j]
                if word in takes_value and j + 1 < len(rest):
                    out += [word, rest[j + 1]]
                    j += 2
                    continue
                out += [word] if word.startswith("-") or "=" in word else ["--vm", word]
                j += 1
            return out
        if not arg.startswith("-") and i > 0:
            break
    return argv


def join_overrides(argv: list[str]) -> list[str]:
    """``--override-input NAME REF`` (two words, as nix takes it) -> ``--override-input
    NAME=REF`` (invoke's options take one); not in the words after a standalone "--"."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return out + argv[i:]
        if word == OVERRIDE and i + 2 < len(argv) and "=" not in argv[i + 1]:
            out += [word, f"{argv[i + 1]}={argv[i + 2]}"]
            i += 3
            continue
        out.append(word)
        i += 1
    return out


def normalise(argv: list[str]) -> list[str]:
    """Let ``TASK --help`` mean ``--help TASK``: invoke would take --help as TASK's argument."""
    argv = expand_names(join_overrides(argv))
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
    given = list(sys.argv if argv is None else argv)
    common.COMMAND_LINE[:] = given  # exec and ssh take the words after "--" exactly as given
    try:
        program.run(normalise(given))
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
