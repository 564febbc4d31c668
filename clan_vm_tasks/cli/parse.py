"""The words of one task's command line, parsed with the options its declaration gives
(``cli.options``): the same values invoke would hand the task, and clear mistakes.

As with invoke: ``--opt VALUE`` and ``--opt=VALUE``; a value may start with ``-`` unless it
is one of the task's own options; a repeatable option gathers a list; a bare optional
option (``--flake``) is True. An option whose value is NAME=VALUE may take it as two words,
as nix does (``--override-input nixpkgs ../nixpkgs``). Stricter than invoke, as a user
expects: one task per command (a word left over is an error, not a second task), an option
given twice is an error, and ``--`` ends the options (``delete -- -odd-name``), except for a
task that takes what follows it (``exec NAME -- CMD``), which reads those words itself.
"""

from __future__ import annotations

from typing import Any

from clan_vm_tasks.cli.options import Option, metavar, options
from clan_vm_tasks.errors import close_match
from clan_vm_tasks.tasks import MODULE_OF
from clan_vm_tasks.tasks.common import TaskSpec

HELP_FLAGS = ("--help", "-h")


class UsageError(Exception):
    """A command line that asks for nothing we can do: one ``error:`` line, exit code 2."""


class WantsHelp(Exception):
    """``TASK ... --help``: show the task's help instead."""


def suggest(word: str, choices: list[str]) -> str:
    """``; did you mean 'X'?`` for a close match among CHOICES, else nothing."""
    close = close_match(word, choices)
    return f"; did you mean '{close}'?" if close else ""


def parse(spec: TaskSpec, words: list[str]) -> dict[str, Any]:
    """The keyword arguments for SPEC's function from WORDS (what follows the task's name),
    every option present (given, else its default), as invoke passes them."""
    opts = options(spec)
    flags: dict[str, tuple[Option, bool]] = {o.flag: (o, True) for o in opts}
    flags.update({o.inverse: (o, False) for o in opts if o.inverse})
    flags.update({o.short: (o, True) for o in opts if o.short})
    values: dict[str, Any] = {}

    def store(option: Option, value: Any) -> None:
        if option.kind == "list":
            values.setdefault(option.name, []).append(value)
        elif option.name in values:
            raise UsageError(f"{option.flag} was given twice")
        else:
            values[option.name] = value

    def waiting() -> list[Option]:  # positionals not given yet
        return [o for o in opts if o.positional and o.name not in values]

    def bare(word: str) -> None:
        if waiting():
            values[waiting()[0].name] = word
        elif spec.names is not None:
            values.setdefault(spec.names, []).append(word)
        else:
            raise UsageError(_leftover(spec, word, values))

    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            if spec.after_dashes is None:
                for rest in words[i:]:  # "--" ends the options: delete -- -odd-name
                    bare(rest)
            break  # else the task reads what follows itself (exec NAME -- CMD)
        if word in HELP_FLAGS:
            raise WantsHelp
        if not (word.startswith("-") and len(word) > 1):
            bare(word)
            continue
        flag, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        if flag not in flags:
            raise UsageError(_unknown(spec, flag, sorted(flags), values))
        option, positive = flags[flag]
        if option.kind == "bool":
            if eq:
                raise UsageError(f"{flag} takes no value")
            store(option, positive)
            continue
        if eq:
            store(option, value)
            continue
        following = words[i] if i < len(words) else None
        if following is None or following in flags or following == "--":
            if not option.optional:
                raise UsageError(f"{flag} needs a value ({flag} {metavar(option)})")
            store(option, True)
            continue
        if option.optional and waiting():
            raise UsageError(
                f"{flag} {following!r} is ambiguous: write {flag}={following}, or give "
                f"{metavar(waiting()[0])} first"
            )
        second = words[i + 1] if i + 1 < len(words) else None
        if option.pair and "=" not in following and second is not None:
            if second in flags or second == "--":
                raise UsageError(f"{flag} needs two words ({flag} {metavar(option)})")
            store(option, f"{following}={second}")  # as nix takes it: --override-input N REF
            i += 2
            continue
        store(option, following)
        i += 1
    if waiting():
        wanted = " ".join(metavar(o) for o in opts if o.positional)
        raise UsageError(
            f"'{spec.name}' needs {metavar(waiting()[0])} (clan-vm-manager {spec.name} {wanted})"
        )
    return {o.name: values.get(o.name, o.default) for o in opts}


def _command(spec: TaskSpec, values: dict[str, Any]) -> str:
    given = [str(values[o.name]) for o in options(spec) if o.positional and o.name in values]
    return " ".join(["clan-vm-manager", spec.name, *given])


def _unknown(spec: TaskSpec, flag: str, known: list[str], values: dict[str, Any]) -> str:
    message = f"unknown option {flag} for '{spec.name}'"
    if spec.after_dashes is not None:
        return f"{message}; the command goes after '--' ({_command(spec, values)} -- ...)"
    return message + suggest(flag, [*known, *HELP_FLAGS])


def _leftover(spec: TaskSpec, word: str, values: dict[str, Any]) -> str:
    command = _command(spec, values)
    if spec.after_dashes is not None:
        return f"unexpected {word!r}: the command goes after '--' ({command} -- {word} ...)"
    if word in MODULE_OF:
        return f"unexpected {word!r} after '{command}': one task per command"
    return f"unexpected {word!r} after '{command}'"
