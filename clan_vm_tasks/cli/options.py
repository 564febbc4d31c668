"""Each task's options, derived from its declaration (``tasks.common.vm_task``) and its
function's signature by invoke's own rules, so ``clan-vm-manager TASK`` and
``invoke TASK`` accept the same options (tests/cli/test_parity.py holds them to it).

invoke's rules: the parameters after the context are the options, named ``--like-this``;
those without a default are positional unless the task names its positionals; an
iterable one gathers a list; a bool default makes a flag (``--no-X`` too when it
defaults to True), unless its value is optional; anything else takes a string. A
one-letter flag exists only where the task names one (``copy -r``).
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

from clan_vm_tasks.tasks.common import TaskSpec


class Option(NamedTuple):
    name: str  # the parameter: wait_for
    flag: str  # --wait-for
    kind: str  # "bool" (a flag), "str" (takes a value) or "list" (repeatable)
    optional: bool  # the value may be left out: then the option is True
    positional: bool  # also given as a bare word, in order (start NAME)
    default: Any
    help: str
    short: str | None  # its one-letter flag (-r), if the task names one
    pair: bool  # NAME=VALUE may be given as two words: --override-input NAME REF

    @property
    def inverse(self) -> str | None:
        """``--no-X`` for a flag that defaults to True (invoke makes one)."""
        return f"--no-{self.flag[2:]}" if self.kind == "bool" and self.default is True else None


# What an option's value is, for usage lines and help (default: its name in capitals).
METAVARS = {
    "action": "push|remove",
    "append": "STR",
    "bridge": "BR",
    "check": "CMD",
    "clan_dir": "DIR",
    "cpus": "N",
    "disk": "MIB",
    "expect": "TEXT",
    "filter": "STATE",
    "flake": "REF",
    "forward": "tcp:HOST:GUEST",
    "from_image": "BASE",
    "initrd": "PATH",
    "junit": "FILE",
    "kernel": "PATH",
    "limit": "N",
    "memory": "MIB",
    "max_size": "SIZE",
    "no_forward": "SPEC",
    "older_than": "DAYS",
    "override_input": "NAME REF",
    "qemu_arg": "ARG",
    "source": "SRC",
    "tap": "IF",
    "target": "DST",
    "timeout": "S",
    "vm": "NAME",
    "wait_for": "TEXT",
}


def metavar(option: Option) -> str:
    return METAVARS.get(option.name, option.name.upper())


def options(spec: TaskSpec) -> list[Option]:
    """SPEC's options: its positionals first, in their order, then the others as declared."""
    params = list(inspect.signature(spec.body).parameters.values())[1:]  # after the context
    positional = spec.positional
    if positional is None:
        positional = tuple(p.name for p in params if p.default is inspect.Parameter.empty)
    found = []
    for param in params:
        default = None if param.default is inspect.Parameter.empty else param.default
        optional = param.name in spec.optional
        if param.name in spec.iterable:
            kind, default = "list", [] if default is None else default
        elif isinstance(default, bool) and not optional:
            kind = "bool"
        elif default is None or isinstance(default, str | bool):
            kind = "str"
        else:  # invoke would convert the value to the default's type: none of ours does
            raise TypeError(f"task {spec.name}: option {param.name} defaults to {default!r}")
        flag = "--" + param.name.replace("_", "-")
        found.append(
            Option(
                name=param.name,
                flag=flag,
                kind=kind,
                optional=optional,
                positional=param.name in positional,
                default=default,
                help=spec.help.get(flag[2:], spec.help.get(param.name, "")),
                short=f"-{spec.shortflags[param.name]}" if param.name in spec.shortflags else None,
                pair=param.name in spec.pairs,
            )
        )
    order = {name: i for i, name in enumerate(positional)}
    return sorted(found, key=lambda o: order.get(o.name, len(order)))
