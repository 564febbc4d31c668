"""``clan-vm-manager``: the tasks' own command line.

It parses with the tasks' declarations (``cli.parse``) and calls the task, so a command
pays only for what it does: invoke, which runs the same tasks for ``invoke TASK`` in a
checkout, is never imported here. Completion (``cli.completion``) is answered before
anything else is loaded.
"""

from __future__ import annotations

import os
import sys

from clan_vm_tasks import __version__

TYPE_CHECKING = False  # typing itself costs a Tab more than the rest of its answer
if TYPE_CHECKING:
    from typing import Any

PROGRAM = "clan-vm-manager"


def _usage_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class _Context:
    """What a task gets as its invoke context: made only if a task ever asks for it."""

    def __getattr__(self, name: str) -> Any:
        from invoke.context import Context

        context = Context()
        self.__dict__.update(context=context)
        return getattr(context, name)


def main(argv: list[str] | None = None) -> None:
    given = list(sys.argv if argv is None else argv)
    words = given[1:]
    if words[:1] == ["__complete"]:  # a shell asking on every Tab: nothing else loaded
        from clan_vm_tasks.cli import completion

        completion.answer(words[1:])
        return
    try:
        _run(given, words)
        sys.stdout.flush()  # what is still buffered meets a closed pipe here, not at exit
    except BrokenPipeError:
        from clan_vm_tasks.tasks.common import reader_gone

        reader_gone()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:
        if os.environ.get("CLAN_VM_DEBUG"):
            raise
        print(f"error: internal error: {error!r} (CLAN_VM_DEBUG=1 shows where)", file=sys.stderr)
        sys.exit(1)


def entry() -> None:
    """The installed command: ``main`` (or, for ``exec``, the command server's worker: see
    ``cli.handoff``), then out without the interpreter's teardown, which collects every
    object of every module (some 9 ms, on every command). Nothing of ours waits for it: no
    atexit handlers, every file is closed where it is written. A command that left a thread
    to be joined (the web page's actions) ends the ordinary way."""
    from clan_vm_tasks.cli import handoff

    start_server = False
    if handoff.wanted(sys.argv[1:]):
        try:
            handed, start_server = handoff.run(sys.argv)
        except KeyboardInterrupt:  # ^C before a worker took the command: it never ran
            os._exit(130)
        if handed is not None:
            os._exit(handed)
    code = _code(sys.argv)
    if start_server:
        handoff.start_server()
    threading = sys.modules.get("threading")
    if threading is not None and any(
        not thread.daemon
        for thread in threading.enumerate()
        if thread is not threading.main_thread()
    ):
        sys.exit(code)
    os._exit(_flushed(code))


def outcome(argv: list[str]) -> int:
    """Run the command ARGV (as sys.argv): its exit code, what it printed flushed."""
    return _flushed(_code(argv))


def _code(argv: list[str]) -> str | int | None:
    try:
        main(argv)
    except SystemExit as done:
        return done.code
    return 0


def _flushed(code: str | int | None) -> int:
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, or None when fd 1 was
            code = code or 1
    return code or 0


def _run(given: list[str], words: list[str]) -> None:
    from clan_vm_tasks import tasks
    from clan_vm_tasks.cli.parse import HELP_FLAGS, UsageError, WantsHelp, parse, suggest
    from clan_vm_tasks.tasks import common

    first = words[0] if words else None
    if first is None or first in HELP_FLAGS:
        from clan_vm_tasks.cli import help as helptext

        topic = words[1] if len(words) > 1 else None
        every = tasks.every_task()
        if topic is None:
            print(helptext.overview(__version__))
        elif topic in every:
            print(helptext.task_help(every[topic]))
        elif topic in helptext.BUILTINS:
            print(helptext.BUILTINS[topic][0])
        else:
            _usage_error(f"no task named {topic!r}{suggest(topic, list(every))}")
        return
    if first in ("-V", "--version"):
        print(f"{PROGRAM} {__version__}")
        return
    if first in ("-l", "--list"):
        print("\n".join(sorted(tasks.every_task())))
        return
    if first == "completion":
        from clan_vm_tasks.cli import completion

        completion.script_command(words[1:])
        return
    spec = tasks.declaration(first)
    if spec is None:
        from clan_vm_tasks.cli import help as helptext

        if first.startswith("-"):
            _usage_error(f"unknown option {first} (see: {PROGRAM} --help)")
        choices = [*tasks.every_task(), *helptext.BUILTINS]
        _usage_error(f"no task named {first!r}{suggest(first, choices)} (see: {PROGRAM} --help)")
    assert spec is not None
    try:
        kwargs = parse(spec, words[1:])
    except WantsHelp:
        from clan_vm_tasks.cli import help as helptext

        print(helptext.task_help(spec))
        return
    except UsageError as error:
        _usage_error(str(error))
    common.COMMAND_LINE[:] = given  # exec and ssh take the words after "--" exactly as given
    spec.body(_Context(), **kwargs)
