"""The Nix tasks: ``eval``, ``build``, ``boot-test``, ``switch``.

The Nix modules (and pydantic) are imported inside the tasks, so tasks that do
not use a flake never pay for them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from clan_vm_tasks import render
from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.names import check_name
from clan_vm_tasks.render import notice, show_progress
from clan_vm_tasks.tasks.common import (
    ALLOW_QEMU_ARGS_HELP,
    ALLOW_SHARES_HELP,
    FLAKE_HELP,
    NAME_HELP,
    OVERRIDE_INPUT_HELP,
    QUIET_HELP,
    number,
    open_store,
    overrides,
    say,
    vm_task,
)

if TYPE_CHECKING:
    from invoke.context import Context


def _names(names: list[str] | None) -> list[str]:
    for name in names or []:
        check_name(name)
    return list(names or [])


@vm_task(
    name="eval",
    iterable=["vm", "override_input"],
    pairs=["override_input"],
    names="vm",
    examples=["eval", "eval web db --flake ~/infra"],
    help={
        "vm": "a VM to show (repeatable; default: all)",
        "flake": FLAKE_HELP,
        "override_input": OVERRIDE_INPUT_HELP,
        "quiet": QUIET_HELP,
    },
)
def eval_(
    c: Context,
    vm: list[str] | None = None,
    flake: str | None = None,
    quiet: bool = False,
    override_input: list[str] | None = None,
) -> None:
    """Print the evaluated clanVms definitions of a flake as JSON."""
    from clan_vm_tasks.nix import flakes
    from clan_vm_tasks.nix.declared import declared, require, to_config

    chosen = _names(vm)
    inputs = overrides(override_input)
    show_progress(quiet)
    store, _ = open_store()
    selected = flakes.chosen(flake, inputs)
    vms = declared(store, selected)
    result = {}
    for name in chosen or sorted(vms):
        found = require(vms, selected, name)
        to_config(name, found)  # a wrong type is an error here too
        result[name] = found.definition
    say(render.as_json(result))


@vm_task(
    iterable=["vm", "override_input"],
    pairs=["override_input"],
    names="vm",
    examples=["build", "build web"],
    help={
        "vm": "a VM to build (repeatable; default: all)",
        "flake": FLAKE_HELP,
        "override_input": OVERRIDE_INPUT_HELP,
        "quiet": QUIET_HELP,
    },
)
def build(
    c: Context,
    vm: list[str] | None = None,
    flake: str | None = None,
    quiet: bool = False,
    override_input: list[str] | None = None,
) -> None:
    """Build what declared VMs refer to; keep it from the GC.

    Build all that declared VMs refer to (kernels, initrds, systems, ...), keep it from the
    garbage collector and print the store paths."""
    from clan_vm_tasks.nix import flakes, origin
    from clan_vm_tasks.nix.declared import declared, require, to_config
    from clan_vm_tasks.nix.evaluate import BUILDABLE_FIELDS
    from clan_vm_tasks.nix.realise import realise

    chosen = _names(vm)
    inputs = overrides(override_input)
    show_progress(quiet)
    store, _ = open_store()
    selected = flakes.chosen(flake, inputs)
    vms = declared(store, selected)
    rows = []
    for name in chosen or sorted(vms):
        found = require(vms, selected, name)
        to_config(name, found)
        roots = realise(store, selected, name, found, origin.load(store, name)).roots
        for field, objects in sorted(found.installables.items()):
            if field in BUILDABLE_FIELDS:  # the file itself
                rows.append([name, field, found.definition[field]])
                continue
            for path in sorted({p for o in objects for p in roots.get(o, [])}):
                rows.append([name, field, path])
    say(render.table(["NAME", "FILE", "PATH"], rows))


@vm_task(
    name="boot-test",
    iterable=["vm", "check", "override_input"],
    pairs=["override_input"],
    names="vm",
    examples=[
        "boot-test --junit results.xml",
        "boot-test web --check 'systemctl is-system-running'",
    ],
    help={
        "vm": "a VM to boot (repeatable; default: every declared VM)",
        "flake": FLAKE_HELP,
        "override_input": OVERRIDE_INPUT_HELP,
        "timeout": "seconds each VM gets to show its ready text (default: its bootTest.timeout)",
        "expect": "ready text to wait for (default: each VM's bootTest.expect)",
        "junit": "also write the results as JUnit XML to this file",
        "allow_qemu_args": ALLOW_QEMU_ARGS_HELP,
        "allow_shares": ALLOW_SHARES_HELP,
        "check": "a command run in each booted guest (through its agent) that must exit 0 "
        "(repeatable; added to each VM's bootTest.checks)",
    },
)
def boot_test(
    c: Context,
    vm: list[str] | None = None,
    flake: str | None = None,
    timeout: str | None = None,
    expect: str | None = None,
    junit: str | None = None,
    allow_qemu_args: bool = False,
    check: list[str] | None = None,
    allow_shares: bool = False,
    override_input: list[str] | None = None,
) -> None:
    """Boot declared VMs in parallel and check them (CI).

    Build and boot declared VMs in parallel, wait until each is ready, run its checks in the
    guest, power them off (CI)."""
    from clan_vm_tasks.nix import boot_test as runner
    from clan_vm_tasks.nix import flakes
    from clan_vm_tasks.nix.request import Request

    chosen = _names(vm)
    seconds = None if timeout is None else number(timeout, "timeout", 0, float)
    inputs = overrides(override_input)
    store, settings = open_store()
    selected = flakes.chosen(flake, inputs)
    results = runner.run(
        Request(store, settings, "", flake, allow_qemu_args, allow_shares, notice, inputs),
        selected,
        chosen,
        expect=expect or None,
        timeout=seconds,
        checks=tuple(check or ()),
    )
    if junit:
        runner.junit(results, Path(junit), f"clanVms.{flakes.current_system()}")
    say(
        render.table(
            ["NAME", "RESULT", "BOOT", "DETAILS"],
            [
                [
                    r.name,
                    "pass" if r.passed else "FAIL",
                    None if r.seconds is None else f"{r.seconds:.1f}s",
                    r.message,
                ]
                for r in results
            ],
        )
    )
    for r in results:  # what a failure left to say: a build's log, the console's last lines
        if not r.passed and r.console:
            detail = "\n".join(f"  {line}" for line in r.console.splitlines())
            print(f"{r.name}: {r.message}\n{detail}", file=sys.stderr, flush=True)
    failed = [r.name for r in results if not r.passed]
    if failed:
        raise ClanVMError(f"boot test failed for {', '.join(failed)}")
    if not results:
        raise ClanVMError("the flake declares no VMs to boot")


@vm_task(
    iterable=["override_input"],
    pairs=["override_input"],
    examples=["switch web", "switch web --restart --wait-for 'login:'"],
    help={
        "name": NAME_HELP,
        "flake": "build the VM from this flake (default: the flake it was created from)",
        "restart": "when the kernel, initrd or kernel parameters changed, restart the VM to "
        "boot them (without: activate, and say that a restart is needed)",
        "timeout": "seconds switch-to-configuration may run in the guest (default 300)",
        "wait_for": "with a restart: return only after this text appears on the console",
        "allow_qemu_args": ALLOW_QEMU_ARGS_HELP,
        "allow_shares": ALLOW_SHARES_HELP,
        "override_input": OVERRIDE_INPUT_HELP,
        "quiet": QUIET_HELP,
    },
)
def switch(
    c: Context,
    name: str,
    flake: str | None = None,
    restart: bool = False,
    timeout: str | None = None,
    wait_for: str | None = None,
    allow_qemu_args: bool = False,
    allow_shares: bool = False,
    override_input: list[str] | None = None,
    quiet: bool = False,
) -> None:
    """Activate a NixOS VM's changed configuration in the guest.

    Build the changed configuration of a running NixOS VM and activate it in the guest
    (its switch-to-configuration test, through the guest agent; the guest sees the host's
    store); its output and exit code are the command's."""
    from clan_vm_tasks.nix import switch as switching
    from clan_vm_tasks.nix.request import Request
    from clan_vm_tasks.vm.restart import restart as restart_vm

    check_name(name)
    seconds = number(timeout, "timeout", 300, float)
    inputs = overrides(override_input)
    show_progress(quiet)
    store, settings = open_store()
    request = Request(store, settings, name, flake, allow_qemu_args, allow_shares, notice, inputs)
    switched = switching.switch(
        request,
        restart=restart,
        timeout=seconds,
        relaunch=lambda before_start: restart_vm(
            store, settings, name, wait_for=wait_for or None, before_start=before_start
        ),
    )
    changed = " and ".join(switched.boot_changes)
    if switched.restarted:
        why = f" ({changed} changed)" if changed else ""
        say(f"restarted VM '{name}' to boot {switched.system}{why}")
        return
    result = switched.result
    assert result is not None
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()
    if result.truncated:
        notice("warning: the guest agent cut the output of switch-to-configuration (16 MiB)")
    if changed:
        notice(
            f"notice: the {changed} changed: restart the VM to boot them "
            f"(clan-vm-manager switch {name} --restart)"
        )
    if result.exit_code:
        raise SystemExit(result.exit_code)
