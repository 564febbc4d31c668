"""What every task module shares: the task decorator with our error handling, option
parsing, the state directory, output.

Numbers arrive as strings and are checked here, so every entry point reports bad
input the same way: one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import functools
import math
import re
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from invoke.exceptions import Exit
from invoke.tasks import Task, task

from clan_vm_tasks.errors import ClanVMError, Interrupted, InvalidInput
from clan_vm_tasks.state.settings import Settings

if TYPE_CHECKING:
    from clan_vm_tasks.state.store import Store

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(body: F) -> F:
    """Turn our errors into one ``error:`` line and the right exit code, never a traceback."""

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _check_text([*args[1:], *kwargs.values()])
            return body(*args, **kwargs)
        except ClanVMError as error:
            raise Exit(f"error: {error}", code=error.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("error: interrupted", code=130) from None
        except Interrupted as signalled:
            name = signal.Signals(signalled.signum).name
            raise Exit(f"error: interrupted by {name}", code=128 + signalled.signum) from None
        except OSError as error:
            raise Exit(f"error: {error}", code=1) from None

    return wrapper  # type: ignore[return-value]


class _Task(Task[Callable[..., Any]]):
    """A task whose arguments get only the short flags it names (argument -> letter)."""

    shortflags: ClassVar[dict[str, str]] = {}

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
        short = self.shortflags.get(name)
        if short is not None and short not in taken_names:
            opts["names"] = [*opts["names"], short]
        return opts


def vm_task(
    *, name: str | None = None, shortflags: dict[str, str] | None = None, **options: Any
) -> Callable[[Callable[..., Any]], Any]:
    """An invoke task with our error handling and no auto-generated short flags (only those
    SHORTFLAGS gives: argument name -> letter)."""

    def decorate(body: Callable[..., Any]) -> Any:
        extra = {"name": name} if name else {}
        made = task(auto_shortflags=False, klass=_Task, **extra, **options)(reports_errors(body))
        made.shortflags = dict(shortflags or {})
        return made

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
    from clan_vm_tasks.state.store import Store
    from clan_vm_tasks.vm.recovery import recover

    settings = Settings.load(accel=accel)
    store = Store(settings.state_dir)
    if create:
        store.ensure()
    if store.root.is_dir():
        recover(store)
        if store.unlisting_work():  # a killed delete: its VM still in a clan's inventory
            from clan_vm_tasks.clan import sync
            from clan_vm_tasks.render import notice

            sync.finish(store, notice)
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
