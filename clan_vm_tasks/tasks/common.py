"""What every task module shares: the task decorator with our error handling, option
parsing, the state directory, output.

Numbers arrive as strings and are checked here, so every entry point reports bad
input the same way: one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from invoke.exceptions import Exit
from invoke.tasks import task

from clan_vm_tasks.errors import ClanVMError, InvalidInput
from clan_vm_tasks.state.settings import Settings

if TYPE_CHECKING:
    from clan_vm_tasks.state.store import Store

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(body: F) -> F:
    """Turn our errors into one ``error:`` line and the right exit code, never a traceback."""

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return body(*args, **kwargs)
        except ClanVMError as error:
            raise Exit(f"error: {error}", code=error.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("error: interrupted", code=130) from None
        except OSError as error:
            raise Exit(f"error: {error}", code=1) from None

    return wrapper  # type: ignore[return-value]


def vm_task(*, name: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """An invoke task with our error handling and no auto-generated short flags."""

    def decorate(body: Callable[..., Any]) -> Any:
        extra = {"name": name} if name else {}
        return task(auto_shortflags=False, **extra, **options)(reports_errors(body))

    return decorate


def number(value: str | int | float | None, option: str, default: float, kind: type = int) -> Any:
    if value is None:
        return kind(default)
    try:
        parsed = kind(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"--{option} must be a number, not {value!r}") from None
    if parsed <= 0:
        raise InvalidInput(f"--{option} must be positive, not {value}")
    return parsed


def open_store(accel: str | None = None) -> tuple[Store, Settings]:
    from clan_vm_tasks.state.store import Store

    settings = Settings.load(accel=accel)
    return Store(settings.state_dir).ensure(), settings


def say(text: str) -> None:
    print(text, flush=True)


NAME_HELP = "name of the VM"
CLAN_DIR_HELP = "clan directory whose inventory.json lists this VM (default: $CLAN_DIR)"
FLAKE_HELP = "flake declaring clanVms (default: $CLAN_VM_FLAKE, else the flake around the cwd)"
