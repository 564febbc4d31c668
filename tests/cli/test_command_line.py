"""The command line as a user meets it: help of its own, mistakes that say what was meant,
one task per command, and quiet pipes."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from clan_vm_tasks.cli.help import summary
from clan_vm_tasks.cli.options import metavar, options
from clan_vm_tasks.cli.parse import parse
from clan_vm_tasks.tasks import every_task
from tests.conftest import CLI, ROOT
from tests.tasks.test_bad_input import assert_input_error, snapshot

TASKS = every_task()
INVOKE_ONLY = (
    "--prompt-for-sudo-password",
    "--dry",
    "--pty",
    "--hide",
    "--warn-only",
    "--command-timeout",
    "--core-opts",
    "--complete",
    "--print-completion-script",
    "--write-pyc",
    "STRING",
)


def test_the_overview_has_every_task_with_a_whole_one_line_summary(cli: CLI) -> None:
    cli.env["COLUMNS"] = "80"
    out = cli.ok("--help").out
    lines = out.splitlines()
    for name, spec in TASKS.items():
        sentence = summary(spec)
        assert sentence.endswith("."), (name, sentence)
        line = next(line for line in lines if line.startswith(f"  {name} "))
        assert line.split(maxsplit=1)[1] == sentence and len(line) <= 80, line
    assert "  completion  Print a completion script for a shell" in out
    assert [option for option in INVOKE_ONLY if option in out] == []
    assert cli.ok().out == out
    assert cli.ok("--list").out.split() == sorted(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_help_shows_positionals_as_positionals_and_examples_that_work(
    cli: CLI, name: str
) -> None:
    spec = TASKS[name]
    out = cli.ok(name, "--help").out
    assert cli.ok("--help", name).out == out
    positional = [metavar(o) for o in options(spec) if o.positional]
    assert out.startswith(" ".join(["Usage: clan-vm-manager", name, *positional]))
    hidden = [o.flag for o in options(spec) if o.positional and o.flag in out]
    assert hidden == [] and [o for o in INVOKE_ONLY if o in out] == []
    examples = out.split("\nExamples:\n", 1)[1].strip().splitlines()
    assert 1 <= len(examples) <= 3
    for example in examples:
        words = shlex.split(example)
        assert words[:2] == ["clan-vm-manager", name]
        parse(spec, words[2:])  # raises if the example is not a valid command line


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("strat", "web"), "no task named 'strat'; did you mean 'start'?"),
        (("status", "wbe"), "no VM named 'wbe'; did you mean 'web'?"),
        (("status", "web", "list"), "unexpected 'list' after 'clan-vm-manager status web'"),
        (("exec", "web", "uname", "-a"), "the command goes after '--'"),
        (("start", "web", "--wiat-for", "READY"), "did you mean '--wait-for'?"),
        (("delete",), "'delete' needs NAME"),
        (("completion", "tcsh"), "completion takes one shell: bash | zsh | fish"),
    ],
)
def test_a_mistake_says_what_was_meant_and_changes_nothing(
    cli: CLI, args: tuple[str, ...], fragment: str
) -> None:
    cli.ok("create", "web", "--disk", "16")
    before = snapshot(cli.state_dir)
    result = cli.run(*args)
    assert_input_error(result.code, result.err, result.out, fragment)
    assert snapshot(cli.state_dir) == before


def test_the_version(cli: CLI) -> None:
    assert cli.ok("--version").out.strip() == "clan-vm-manager 0.1.0"


def registered(state_dir: Path, count: int) -> None:
    """COUNT stopped VMs, written as the tool writes them (list only reads these files)."""
    for i in range(count):
        vm = state_dir / "vms" / f"vm{i:03}"
        vm.mkdir(parents=True)
        config = {"name": vm.name, "cpus": 1, "memory": 64, "disk_size": 16, "network": {}}
        (vm / "config.json").write_text(json.dumps(config))
        (vm / "state.json").write_text("{}")


@pytest.mark.parametrize("entry", ["clan-vm-manager", "module", "invoke"])
@pytest.mark.parametrize("args", [("list", "--json"), ("list",), ("--help",)])
def test_a_reader_that_is_gone_ends_the_command_quietly(
    cli: CLI, entry: str, args: tuple[str, ...]
) -> None:
    registered(cli.state_dir, 3)
    read, write = os.pipe()
    os.close(read)  # the reader went away before anything was written
    # Buffered, as Python writes to a pipe unless told otherwise: what is left in the buffer
    # meets the closed pipe only when the command ends.
    env = {k: v for k, v in cli.env.items() if k != "PYTHONUNBUFFERED"}
    with os.fdopen(write, "wb") as out:
        proc = subprocess.run(
            [*cli.command(entry), *args],
            stdout=out,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
            check=False,
        )
    if entry == "invoke" and args == ("--help",):
        return  # invoke's own help: not ours to keep quiet
    assert (proc.returncode, proc.stderr) == (141, b"")


def test_list_piped_into_head_ends_quietly(cli: CLI) -> None:
    registered(cli.state_dir, 400)  # more JSON than a pipe holds: head closes it mid-write
    for args in ("list --json", "list"):
        script = f"clan-vm-manager {args} 2>err | head -c 100 >/dev/null; echo ${{PIPESTATUS[0]}}"
        bindir = Path(cli.command()[0]).parent
        env = {**cli.env, "PATH": f"{bindir}:{os.environ['PATH']}"}
        done = subprocess.run(
            ["bash", "-c", script],
            env=env,
            cwd=cli.state_dir.parent,
            capture_output=True,
            text=True,
            check=True,
        )
        assert (cli.state_dir.parent / "err").read_text() == ""
        # The table fits into the pipe: it may be written whole before head goes.
        assert done.stdout.strip() in (("141",) if "json" in args else ("0", "141"))
