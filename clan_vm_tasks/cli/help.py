"""Help of our own, made from the task declarations: every task with its whole first
sentence, a task's usage with its positionals as positionals, its options, examples."""

from __future__ import annotations

import re
import shutil
import textwrap

from clan_vm_tasks.cli.options import Option, metavar, options
from clan_vm_tasks.tasks import every_task
from clan_vm_tasks.tasks.common import TaskSpec

PROGRAM = "clan-vm-manager"
# Commands of the command line itself, beside the tasks.
BUILTINS = {
    "completion": (
        "Print a completion script for a shell: completion bash|zsh|fish.",
        'eval "$(clan-vm-manager completion bash)"   # in ~/.bashrc',
    ),
}
_SENTENCE_END = re.compile(r"\.(\s|$)")


def _width() -> int:
    return max(60, min(100, shutil.get_terminal_size((80, 24)).columns))


def description(spec: TaskSpec) -> str:
    """The function's docstring, its lines joined into paragraphs."""
    doc = textwrap.dedent(spec.body.__doc__ or "").strip()
    return "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n"))


def summary(spec: TaskSpec) -> str:
    """The docstring's first sentence, whole."""
    first = description(spec).split("\n\n")[0]
    end = _SENTENCE_END.search(first)
    return first[: end.start() + 1] if end else first


def _wrap(text: str, indent: int, first: str = "") -> str:
    width = _width()
    return textwrap.fill(
        text,
        width=width,
        initial_indent=first.ljust(indent) if first else " " * indent,
        subsequent_indent=" " * indent,
        break_on_hyphens=False,
        break_long_words=False,
    )


def overview(version: str) -> str:
    tasks = every_task()
    names = sorted([*tasks, *BUILTINS])
    column = max(len(n) for n in names) + 4
    lines = [
        f"{PROGRAM} {version}: QEMU VMs for NixOS and clan users",
        "",
        f"Usage: {PROGRAM} TASK [ARGUMENTS]      ({PROGRAM} TASK --help: its arguments)",
        "",
        "Tasks:",
    ]
    for name in names:
        text = BUILTINS[name][0] if name in BUILTINS else summary(tasks[name])
        lines.append(_wrap(text, column, f"  {name}"))
    lines += [
        "",
        "Options:",
        _wrap("show this help, or TASK's", 22, "  -h, --help [TASK]"),
        _wrap("show the version", 22, "  -V, --version"),
        _wrap("list the task names, one a line", 22, "  -l, --list"),
    ]
    return "\n".join(lines)


def _option_words(option: Option, usage: bool = False) -> str:
    if option.kind == "bool" and option.short:
        return option.short if usage else f"{option.short}, {option.flag}"
    if option.kind == "bool":
        return option.flag
    if option.optional:
        return f"{option.flag}[={metavar(option)}]"
    return f"{option.flag} {metavar(option)}"


def usage(spec: TaskSpec) -> str:
    opts = options(spec)
    words = [metavar(o) for o in opts if o.positional]
    if spec.names is not None:
        words.append(f"[{metavar(next(o for o in opts if o.name == spec.names))}...]")
    for option in opts:
        if not option.positional:
            repeat = "..." if option.kind == "list" else ""
            words.append(f"[{_option_words(option, usage=True)}]{repeat}")
    if spec.after_dashes is not None:
        words.append(spec.after_dashes)
    first = f"Usage: {PROGRAM} {spec.name} "
    # Lines break between words of the usage, never inside one ("[--host HOST]").
    glued = " ".join(word.replace(" ", "\u00a0") for word in words)
    return _wrap(glued, len(first), first).replace("\u00a0", " ")


def task_help(spec: TaskSpec) -> str:
    opts = options(spec)
    paragraphs = description(spec).split("\n\n")
    lines = [usage(spec), "", *(_wrap(p, 2) + "\n" for p in paragraphs if p)]
    positional = [o for o in opts if o.positional]
    rest = [o for o in opts if not o.positional]
    column = max([len(_option_words(o)) for o in opts] + [10]) + 4
    if positional:
        lines.append("Arguments:")
        lines += [_wrap(o.help, column, f"  {metavar(o)}") for o in positional]
        lines.append("")
    lines.append("Options:")
    for option in rest:
        text = option.help
        if option.kind == "list" and "repeatable" not in text:
            text += " (repeatable)"
        lines.append(_wrap(text.strip(), column, f"  {_option_words(option)}"))
        if option.inverse:
            lines.append(_wrap(f"the opposite of {option.flag}", column, f"  {option.inverse}"))
    lines.append(_wrap("show this help", column, "  -h, --help"))
    if spec.examples:
        lines += ["", "Examples:", *(f"  {PROGRAM} {example}" for example in spec.examples)]
    return "\n".join(lines)
