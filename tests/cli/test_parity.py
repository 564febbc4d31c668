"""``clan-vm-manager`` parses with the task declarations itself; invoke gets Tasks made
from the same declarations. Here both are held to agree on every task and every option:
the options they derive, and what each hands a task for the same command line."""

from __future__ import annotations

from typing import Any

import pytest
from invoke.exceptions import ParseError
from invoke.parser import Parser, ParserContext
from invoke.tasks import Task

from clan_vm_tasks.cli.options import Option, options
from clan_vm_tasks.cli.parse import UsageError, parse
from clan_vm_tasks.tasks import MODULE_OF, MODULES, collection, every_task
from clan_vm_tasks.tasks.common import TaskSpec

NS = collection()
TASKS = every_task()


def invoke_task(name: str) -> Task:  # type: ignore[type-arg]
    task: Task = NS[name]  # type: ignore[type-arg]
    return task


def by_invoke(name: str, words: list[str]) -> dict[str, Any] | None:
    """What invoke's parser hands task NAME for WORDS (None: it refuses them)."""
    context = ParserContext(name=name, args=invoke_task(name).get_arguments())
    try:
        parsed = Parser(contexts=[context]).parse_argv([name, *words])
    except ParseError:
        return None
    if len(parsed) != 1:  # a second task, or none
        return None
    return {arg.name: arg.value for arg in parsed[0].args.values()}


def by_us(spec: TaskSpec, words: list[str]) -> dict[str, Any] | None:
    try:
        return parse(spec, words)
    except UsageError:
        return None


def test_the_same_tasks() -> None:
    assert sorted(NS.task_names) == sorted(TASKS)
    assert all(not aliases for aliases in NS.task_names.values())


def test_a_task_is_found_in_the_module_that_declares_it() -> None:
    """A command imports only the module ``MODULE_OF`` names for its task: it must be the
    one that declares it, for every task, and no task may be missing from the map."""
    declared = {name: spec.body.__module__.rsplit(".", 1)[1] for name, spec in TASKS.items()}
    assert declared == MODULE_OF
    assert sorted(set(declared.values())) == sorted(MODULES)


def test_a_command_imports_no_other_task_module() -> None:
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from clan_vm_tasks.tasks import declaration\n"
        "assert declaration('status').name == 'status' and declaration('nope') is None\n"
        "print(' '.join(m for m in sys.modules if m.startswith('clan_vm_tasks.tasks.')))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(loaded) == ["clan_vm_tasks.tasks.common", "clan_vm_tasks.tasks.views"]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_same_options(name: str) -> None:
    arguments = invoke_task(name).get_arguments()
    ours = options(TASKS[name])
    assert [a.name for a in arguments] == [o.name for o in ours]
    for argument, option in zip(arguments, ours, strict=True):
        short = (option.short[1:],) if option.short else ()
        assert argument.names == (option.flag[2:], *short)
        assert argument.kind.__name__ == option.kind
        assert (argument.optional, argument.positional) == (option.optional, option.positional)
        assert argument.default == option.default
        assert (argument.help or "") == option.help
    inverse = ParserContext(name=name, args=arguments).inverse_flags
    assert set(inverse) == {o.inverse for o in ours if o.inverse}


def value(option: Option) -> str:
    return f"v-{option.name}"


def command_lines(spec: TaskSpec) -> list[list[str]]:
    """Command lines that exercise every option of SPEC in each form it takes."""
    opts = options(spec)
    positional = [value(o) for o in opts if o.positional]
    lines = [positional]
    everything = list(positional)
    for option in opts:
        if option.positional:
            continue
        if option.kind == "bool":
            forms = [[option.flag]] + ([[option.inverse]] if option.inverse else [])
            forms += [[option.short]] if option.short else []
        elif option.kind == "list":  # NAME=VALUE values: what --override-input takes
            forms = [[option.flag, "a=1"], [option.flag, "a=1", f"{option.flag}=b=2"]]
        else:
            forms = [[f"{option.flag}={value(option)}"], [option.flag, "-dash-value"]]
            if option.optional:
                forms.append([option.flag])  # bare: True
        for form in forms:
            lines.append([*positional, *form])
            if not (option.optional and "=" not in form[0] and positional):  # ambiguous
                lines.append([*form, *positional])
        everything += forms[0]
    lines.append(everything)
    return lines


def unambiguous_but_refused_by_invoke(spec: TaskSpec, words: list[str]) -> bool:
    """invoke calls even ``--flake=REF NAME`` ambiguous (an optional value before a
    positional); written with "=", it is not, and we take it."""
    optional = {o.flag for o in options(spec) if o.optional}
    return any(w.partition("=")[0] in optional and "=" in w for w in words[:1])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_same_values_for_the_same_command_line(name: str) -> None:
    spec = TASKS[name]
    for words in command_lines(spec):
        expected = by_invoke(name, words)
        if expected is None:
            assert unambiguous_but_refused_by_invoke(spec, words), f"invoke refused {words}"
            flag, _, given = words[0].partition("=")
            assert next(v for k, v in parse(spec, words).items() if f"--{k}" == flag) == given
            continue
        assert by_us(spec, words) == expected, words


@pytest.mark.parametrize("name", sorted(TASKS))
def test_what_invoke_refuses_is_refused(name: str) -> None:
    spec = TASKS[name]
    opts = options(spec)
    positional = [value(o) for o in opts if o.positional]
    wrong = [[*positional, "--no-such-option"]]
    if positional:
        wrong.append(positional[:-1])  # a positional missing
    for option in opts:
        if option.kind == "str" and not option.optional and not option.positional:
            wrong.append([*positional, option.flag])  # its value missing
        if option.kind == "bool":
            wrong.append([*positional, f"{option.flag}=yes"])
        if option.optional and positional:  # a value, or the positional?
            wrong.append([option.flag, "x", *positional])
    for words in wrong:
        assert by_invoke(name, words) is None, words
        assert by_us(spec, words) is None, words


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["status", "web", "list"], "unexpected 'list' after 'clan-vm-manager status web'"),
        (["status", "web", "extra"], "unexpected 'extra'"),
        (["exec", "web", "uname"], "the command goes after '--'"),
        (["exec", "web", "-a"], "the command goes after '--'"),
        (["start", "web", "--wiat-for", "x"], "did you mean '--wait-for'?"),
        (["create", "--flake", "web"], "ambiguous"),
        (["stop", "web", "--timeout", "1", "--timeout", "2"], "--timeout was given twice"),
        (["start"], "'start' needs NAME"),
    ],
)
def test_mistakes_say_what_was_meant(words: list[str], message: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse(TASKS[words[0]], words[1:])
    assert message in str(raised.value)


def test_what_invoke_does_not_do_but_a_user_expects() -> None:
    # "--" ends the options: a name that looks like one is still the name.
    assert parse(TASKS["delete"], ["--", "-odd"])["name"] == "-odd"
    # Names as bare words for the tasks that take several.
    assert parse(TASKS["build"], ["web", "db", "--flake", "."])["vm"] == ["web", "db"]
    # A NAME=VALUE option takes two words as nix does (invoke needs them joined).
    assert parse(TASKS["build"], ["--override-input", "nixpkgs", "/src/nixpkgs", "web"]) == {
        **parse(TASKS["build"], ["--override-input=nixpkgs=/src/nixpkgs", "web"])
    }
    # exec reads the words after "--" itself; its own options still come before.
    parsed = parse(TASKS["exec"], ["web", "--timeout", "5", "--", "ls", "--help"])
    assert (parsed["name"], parsed["timeout"]) == ("web", "5")
