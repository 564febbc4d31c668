"""What every task module shares: the task decorator with our error handling, option
parsing, the state directory, output.

A task is a function decorated with ``vm_task``: its signature and the decorator's
declarations (help, positional, optional, iterable) are the one description of its
command line. ``clan-vm-manager`` parses with them directly (``clan_vm_tasks.cli``);
invoke gets a ``Task`` made from the same description (``tasks.ns``), so invoke is
imported only where it runs the tasks.

Numbers arrive as strings and are checked here, so every entry point reports bad
input the same way: one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from clan_vm_tasks.errors import ClanVMError, Interrupted, InvalidInput
from clan_vm_tasks.state.settings import Settings

if TYPE_CHECKING:
    from clan_vm_tasks.state.store import Store

F = TypeVar("F", bound=Callable[..., Any])


class TaskSpec(NamedTuple):
    """One task as its decorator declared it (``cli.options`` derives the options)."""

    name: str  # as typed on the command line: "list", "boot-test"
    body: Callable[..., Any]  # the function, with our error handling around it
    help: Mapping[str, str]  # parameter -> help line
    positional: tuple[str, ...] | None  # None: the parameters without a default (invoke's rule)
    optional: tuple[str, ...]  # options whose value may be left out (bare --flake)
    iterable: tuple[str, ...]  # repeatable options, gathered into a list
    names: str | None  # the iterable option that bare words fill too (build web db)
    pairs: tuple[str, ...]  # options whose value NAME=VALUE may be two words (NAME VALUE)
    shortflags: Mapping[str, str]  # parameter -> the one-letter flag it also has (-r)
    after_dashes: str | None  # the task reads the words after "--"; their usage ("-- CMD")
    examples: tuple[str, ...]  # command lines for the help, without the program name


# Every task, by name, in the order the modules define them.
TASKS: dict[str, TaskSpec] = {}


def fail(message: str, code: int) -> None:
    """End the command with one ``error:`` line and CODE, whichever entry point runs it."""
    with contextlib.suppress(OSError, ValueError):  # stderr may be gone too
        print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def reader_gone() -> None:
    """Standard output's reader went away (``| head``): end quietly, as git and coreutils
    do, with the exit status of SIGPIPE. Python's final flush must not complain either."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(128 + signal.SIGPIPE)


def reports_errors(body: F) -> F:
    """Turn our errors into one ``error:`` line and the right exit code, never a traceback."""

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _check_text([*args[1:], *kwargs.values()])
            return body(*args, **kwargs)
        except ClanVMError as error:
            fail(str(error), error.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Interrupted as signalled:
            name = signal.Signals(signalled.signum).name
            fail(f"interrupted by {name}", 128 + signalled.signum)
        except BrokenPipeError:
            reader_gone()
        except OSError as error:
            fail(str(error), 1)

    return wrapper  # type: ignore[return-value]


def vm_task(
    *,
    name: str | None = None,
    help: Mapping[str, str] | None = None,
    positional: list[str] | None = None,
    optional: list[str] | None = None,
    iterable: list[str] | None = None,
    names: str | None = None,
    pairs: list[str] | None = None,
    shortflags: Mapping[str, str] | None = None,
    after_dashes: str | None = None,
    examples: list[str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A task with our error handling, registered under NAME (default: the function's name,
    dashed). NAMES: an iterable option whose values may also be given as bare words;
    PAIRS: options whose NAME=VALUE may be written as two words (as nix takes
    --override-input); SHORTFLAGS: parameter -> a one-letter flag (no others are made);
    AFTER_DASHES: how the usage shows the words the task reads after "--" (it reads them
    itself); EXAMPLES: command lines for its help."""

    def decorate(body: Callable[..., Any]) -> Callable[..., Any]:
        wrapped = reports_errors(body)
        task_name = name or body.__name__.replace("_", "-")
        TASKS[task_name] = TaskSpec(
            name=task_name,
            body=wrapped,
            help=dict(help or {}),
            positional=None if positional is None else tuple(positional),
            optional=tuple(optional or ()),
            iterable=tuple(iterable or ()),
            names=names,
            pairs=tuple(pairs or ()),
            shortflags=dict(shortflags or {}),
            after_dashes=after_dashes,
            examples=tuple(examples or ()),
        )
        return wrapped

    return decorate


def _check_text(values: list[Any]) -> None:
    """Arguments that are not valid UTF-8 (Python keeps such bytes as lone surrogates)
    could not be stored: refuse them before anything happens."""
    for value in values:
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                try:
                    text.encode()
                except UnicodeEncodeError:
                    raise InvalidInput(f"argument {text!r} is not valid UTF-8") from None


_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")  # ASCII digits: int() also takes "²²" and "٢٢"


def number(value: str | int | float | None, option: str, default: float, kind: type = int) -> Any:
    """A positive number from the command line; anything else is an InvalidInput."""
    if value is None:
        return kind(default)
    text = str(value)
    if not _NUMBER.fullmatch(text):
        raise InvalidInput(f"--{option} must be a number, not {value!r}")
    if kind is int and "." in text:
        raise InvalidInput(f"--{option} must be a whole number, not {value!r}")
    parsed = kind(text)
    if parsed <= 0 or not math.isfinite(parsed):
        raise InvalidInput(f"--{option} must be positive, not {value}")
    return parsed


def open_store(accel: str | None = None, *, create: bool = True) -> tuple[Store, Settings]:
    """The state directory, with what killed commands left finished. A read-only command
    (CREATE false) creates nothing: without a state directory there is nothing to read."""
    from clan_vm_tasks.clan.opening import open_store as opened

    settings = Settings.load(accel=accel)
    store = opened(settings.state_dir, create=create)
    return store, settings


# The command line as the entry point got it (else sys.argv): invoke keeps only a
# space-joined string of what follows "--", and a command for the guest needs its words.
COMMAND_LINE: list[str] = []


def after_double_dash() -> list[str]:
    """The words after the first standalone "--" on the command line (each valid UTF-8, as
    every other argument must be)."""
    words = COMMAND_LINE or sys.argv
    after = words[words.index("--") + 1 :] if "--" in words else []
    _check_text([after])
    return after


def say(text: str) -> None:
    print(text, flush=True)


def on_host(host: str | None) -> str:
    """Where a VM is, for messages: ' on HOST' (a URI without its parameters) or nothing."""
    return f" on {host.split('?', 1)[0]}" if host else ""


NAME_HELP = "name of the VM"
CLAN_DIR_HELP = "clan directory whose inventory.json lists this VM (default: $CLAN_DIR)"
ALLOW_QEMU_ARGS_HELP = "let the flake's qemuArgs for this VM through (they can run host programs)"
ALLOW_SHARES_HELP = "let the flake's shares for this VM through (the guest sees host directories)"
QUIET_HELP = "show no progress (on a terminal: evaluating, building, creating, booting)"
FLAKE_HELP = "flake declaring clanVms (default: $CLAN_VM_FLAKE, else the flake around the cwd)"
OVERRIDE_INPUT_HELP = (
    "NAME REF: evaluate the flake with its input NAME taken from the flake REF, such as a "
    "local checkout git+file:///src/nixpkgs (repeatable; the lock file is not changed)"
)


def overrides(given: list[str] | None) -> tuple[tuple[str, str], ...]:
    """--override-input NAME REF (joined as NAME=REF by the command line), checked."""
    if not given:
        return ()
    from clan_vm_tasks.nix.flakes import parse_overrides

    return parse_overrides(given)
