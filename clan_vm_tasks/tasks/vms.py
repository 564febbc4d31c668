"""The lifecycle tasks: create, start, stop, restart, delete, pause, resume.

Each parses its options, calls the operation in ``clan_vm_tasks.vm`` and prints
what happened; a flake (``--flake``, or one around the working directory that
declares the VM) is evaluated and built first.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.names import check_name, check_new_name
from clan_vm_tasks.render import notice, show_progress
from clan_vm_tasks.tasks.common import (
    ALLOW_QEMU_ARGS_HELP,
    ALLOW_SHARES_HELP,
    CLAN_DIR_HELP,
    FLAKE_HELP,
    NAME_HELP,
    OVERRIDE_INPUT_HELP,
    QUIET_HELP,
    number,
    on_host,
    open_store,
    overrides,
    say,
    vm_task,
)

if TYPE_CHECKING:
    from invoke.context import Context

    from clan_vm_tasks.vm.start import Started


def _create_from_flake(
    option: str | bool,
    name: str,
    allow_qemu_args: bool,
    allow_shares: bool,
    inputs: tuple[tuple[str, str], ...],
) -> None:
    from clan_vm_tasks.nix import flakes, origin
    from clan_vm_tasks.nix.prepare import Source, apply, plan
    from clan_vm_tasks.nix.request import Request

    store, settings = open_store()
    request = Request(store, settings, name, option, allow_qemu_args, allow_shares, notice, inputs)
    found = Source(flakes.chosen(option, inputs), origin.load(store, name))
    applied = apply(request, plan(request, found))
    config = applied.config
    if applied.change.pending:
        say(f"VM '{name}' runs its earlier definition; the new one applies at its next start")
    elif not applied.created:
        say(f"VM '{name}' is up to date with its definition")
    else:
        say(
            f"created VM '{name}': {config.cpus} cpus, {config.memory} MiB memory, "
            f"{config.disk_size} MiB disk at {store.paths(name).disk}"
        )


@vm_task(
    iterable=["qemu_arg", "forward", "override_input"],
    pairs=["override_input"],
    optional=["flake"],
    examples=[
        "create web --cpus 2 --memory 1024 --kernel vmlinuz --initrd initrd --forward tcp:auto:22",
        "create web --flake",
    ],
    help={
        "name": NAME_HELP,
        "cpus": "virtual CPUs (default 2)",
        "memory": "memory in MiB (default 2048)",
        "disk": "disk size in MiB (default 20480)",
        "kernel": "kernel image for direct kernel boot",
        "initrd": "initrd for direct kernel boot",
        "append": "kernel command line",
        "network": "user (default), nat (same as user), bridge, tap or none",
        "bridge": "bridge to join with --network bridge (default clan-br0)",
        "tap": "existing tap device to use with --network tap",
        "mac": "MAC address (default: derived from the name)",
        "forward": "forward tcp:HOSTPORT:GUESTPORT (or udp:) from 127.0.0.1; HOSTPORT may be "
        "auto (repeatable)",
        "from_image": "base image: the disk is a copy-on-write overlay on it (never written)",
        "qemu_arg": "extra QEMU argument (repeatable)",
        "machine": "QEMU machine type (default q35)",
        "accel": "auto (default), kvm or tcg",
        "host": "place the VM on a libvirt host: a name from the settings file (hosts:) or a "
        "libvirt URI such as qemu:///system or qemu+ssh://USER@HOST/system",
        "clan_dir": CLAN_DIR_HELP,
        "flake": "create (or update) the VM from this flake's clanVms definition instead "
        "(bare --flake: the flake around the cwd)",
        "allow_qemu_args": ALLOW_QEMU_ARGS_HELP,
        "allow_shares": ALLOW_SHARES_HELP,
        "quiet": QUIET_HELP,
        "override_input": OVERRIDE_INPUT_HELP,
    },
)
def create(
    c: Context,
    name: str,
    cpus: str | None = None,
    memory: str | None = None,
    disk: str | None = None,
    kernel: str | None = None,
    initrd: str | None = None,
    append: str | None = None,
    network: str = "user",
    bridge: str | None = None,
    tap: str | None = None,
    mac: str | None = None,
    forward: list[str] | None = None,
    qemu_arg: list[str] | None = None,
    machine: str = "q35",
    accel: str = "auto",
    from_image: str | None = None,
    clan_dir: str | None = None,
    flake: str | bool | None = None,
    allow_qemu_args: bool = False,
    host: str | None = None,
    allow_shares: bool = False,
    quiet: bool = False,
    override_input: list[str] | None = None,
) -> None:
    """Create a VM: its definition, its disk.

    Create a VM: validate its definition, make its qcow2 disk, record it stopped."""
    from clan_vm_tasks.clan import sync
    from clan_vm_tasks.models import VMConfig, dump
    from clan_vm_tasks.schema import parse_forward, validate
    from clan_vm_tasks.vm.create import create as create_vm

    check_new_name(name)
    inputs = overrides(override_input)
    show_progress(quiet)
    if flake:
        _create_from_flake(flake, name, allow_qemu_args, allow_shares, inputs)
        store, _ = open_store()
        sync.push(store, name, sync.clan_dir(clan_dir), notice)
        return
    disk_size = number(disk, "disk", 20480)
    if from_image and disk is None:
        from pathlib import Path

        from clan_vm_tasks.vm import machines

        base = Path(from_image)
        if not base.is_file():
            raise InvalidInput(f"base image {base} does not exist or is not a file")
        # An overlay is as large as its base.
        disk_size = machines.backend(host or None).check_base_image(base)
    definition = {
        "name": name,
        "cpus": number(cpus, "cpus", 2),
        "memory": number(memory, "memory", 2048),
        "disk_size": disk_size,
        "kernel": kernel,
        "initrd": initrd,
        "base_image": from_image,
        "append": append,
        "machine": machine,
        "accel": accel,
        "network": {
            "mode": network,
            "bridge": bridge,
            "tap": tap,
            "mac": mac,
            "forward_ports": [dump(parse_forward(f)) for f in forward or []],
        },
        "qemu_args": list(qemu_arg or []),
        "host": host or None,
    }
    config = validate(VMConfig, definition, "VM definition")
    store, _ = open_store()
    config = create_vm(store, config)
    sync.push(store, name, sync.clan_dir(clan_dir), notice)
    disk_at = f"at {store.paths(name).disk}" if config.host is None else "on its host"
    say(
        f"created VM '{name}'{on_host(config.host)}: {config.cpus} cpus, "
        f"{config.memory} MiB memory, {config.disk_size} MiB disk {disk_at}"
    )


def _running(host: str | None, started: Started) -> str:
    if started.pid is None:
        return f"{on_host(host)} ({started.accel})"
    return f" (pid {started.pid}, {started.accel})"


@vm_task(
    examples=["start web --wait-for 'clan-guest: READY'", "start web --foreground"],
    iterable=["override_input"],
    pairs=["override_input"],
    help={
        "name": NAME_HELP,
        "foreground": "run QEMU attached to this command and stream the console",
        "wait_for_agent": "return only after the guest agent answers (within --timeout)",
        "wait_for_ssh": "return only after the guest's sshd answers with its pinned host key "
        "and takes the VM's key (within --timeout; as for the ssh task)",
        "wait_for": "return only after this text appears on the serial console",
        "timeout": "seconds to wait for --wait-for (default 60)",
        "accel": "override the accelerator: kvm or tcg",
        "clan_dir": CLAN_DIR_HELP,
        "flake": FLAKE_HELP,
        "allow_qemu_args": ALLOW_QEMU_ARGS_HELP,
        "allow_shares": ALLOW_SHARES_HELP,
        "quiet": QUIET_HELP,
        "override_input": OVERRIDE_INPUT_HELP,
    },
)
def start(
    c: Context,
    name: str,
    foreground: bool = False,
    wait_for: str | None = None,
    timeout: str | None = None,
    accel: str | None = None,
    clan_dir: str | None = None,
    flake: str | None = None,
    allow_qemu_args: bool = False,
    wait_for_agent: bool = False,
    allow_shares: bool = False,
    quiet: bool = False,
    override_input: list[str] | None = None,
    wait_for_ssh: bool = False,
) -> None:
    """Start a VM.

    It returns once QEMU answers on QMP (and --wait-for text appeared, and with
    --wait-for-agent the guest agent answered, with --wait-for-ssh its sshd)."""
    from clan_vm_tasks.clan import sync
    from clan_vm_tasks.nix import launch
    from clan_vm_tasks.nix.request import Request
    from clan_vm_tasks.vm.start import start as start_vm

    check_name(name)
    seconds = number(timeout, "timeout", 60, float)
    inputs = overrides(override_input)
    show_progress(quiet)
    store, settings = open_store(accel)
    clan = sync.clan_dir(clan_dir)

    def boot() -> Started:
        if foreground:  # start only returns when the VM is gone again
            sync.push(store, name, clan, notice)
            if sys.stdin.isatty():
                notice(
                    f"the console shows here but takes no input: type into it with "
                    f"'clan-vm-manager console {name}' from another terminal; Ctrl-C stops "
                    "the VM"
                )
        return start_vm(
            store,
            settings,
            name,
            wait_for=wait_for or None,
            timeout=seconds,
            accel=accel,
            foreground=foreground,
            wait_for_agent=wait_for_agent,
            wait_for_ssh=wait_for_ssh,
        )

    request = Request(store, settings, name, flake, allow_qemu_args, allow_shares, notice, inputs)
    started = launch.start(request, boot, wait_for=wait_for or None, follow=not foreground)
    if not foreground:
        sync.push(store, name, clan, notice)
        what = [f"{wait_for!r} appeared"] if wait_for else []
        what += ["the guest agent answered"] if wait_for_agent and not wait_for_ssh else []
        what += ["its SSH server answered"] if wait_for_ssh else []
        how = f"{' and '.join(what) or 'QMP answered'} after {started.seconds:.1f}s"
        say(f"started VM '{name}'{_running(store.host_of(name), started)}: {how}")


@vm_task(
    examples=["stop web", "stop web --force"],
    help={
        "name": NAME_HELP,
        "force": "skip the graceful steps: end QEMU at once",
        "timeout": "seconds the guest gets to power off after the ACPI button (default 30)",
    },
)
def stop(c: Context, name: str, force: bool = False, timeout: str | None = None) -> None:
    """Stop a VM: the power button first, force last.

    Stop a VM: ACPI power button, then QMP quit, SIGTERM, SIGKILL; says which step ended it."""
    from clan_vm_tasks.vm.stop import DEFAULT_STOP_TIMEOUT
    from clan_vm_tasks.vm.stop import stop as stop_vm

    check_name(name)
    seconds = number(timeout, "timeout", DEFAULT_STOP_TIMEOUT, float)
    store, _ = open_store()
    stopped = stop_vm(store, name, force=force, timeout=seconds)
    say(
        f"stopped VM '{name}'{on_host(store.host_of(name))} after {stopped.seconds:.1f}s: "
        f"{stopped.words} ({stopped.step})"
    )


@vm_task(
    examples=["restart web --wait-for 'clan-guest: READY'"],
    iterable=["override_input"],
    pairs=["override_input"],
    help={
        "name": NAME_HELP,
        "timeout": "seconds the guest gets to power off (default 30)",
        "wait_for": "return only after this text appears on the console again",
        "flake": FLAKE_HELP,
        "allow_qemu_args": ALLOW_QEMU_ARGS_HELP,
        "allow_shares": ALLOW_SHARES_HELP,
        "quiet": QUIET_HELP,
        "override_input": OVERRIDE_INPUT_HELP,
    },
)
def restart(
    c: Context,
    name: str,
    timeout: str | None = None,
    wait_for: str | None = None,
    flake: str | None = None,
    allow_qemu_args: bool = False,
    allow_shares: bool = False,
    quiet: bool = False,
    override_input: list[str] | None = None,
) -> None:
    """Stop a VM gracefully and start it again.

    Stop a VM gracefully (if running) and start it again; a VM from a flake is evaluated
    and built first (like start), and its changed definition applied in between."""
    from clan_vm_tasks.nix import launch
    from clan_vm_tasks.nix.request import Request
    from clan_vm_tasks.vm.restart import restart as restart_vm
    from clan_vm_tasks.vm.stop import DEFAULT_STOP_TIMEOUT

    check_name(name)
    seconds = number(timeout, "timeout", DEFAULT_STOP_TIMEOUT, float)
    inputs = overrides(override_input)
    show_progress(quiet)
    store, settings = open_store()
    store.require(name)
    request = Request(store, settings, name, flake, allow_qemu_args, allow_shares, notice, inputs)
    started = launch.restart(
        request,
        lambda before_start: restart_vm(
            store,
            settings,
            name,
            timeout=seconds,
            wait_for=wait_for or None,
            before_start=before_start,
        ),
        wait_for=wait_for or None,
    )
    # As start says it: when the ready text appeared.
    how = f": {wait_for!r} appeared after {started.seconds:.1f}s" if wait_for else ""
    say(f"restarted VM '{name}'{_running(store.host_of(name), started)}{how}")


@vm_task(
    examples=["delete web", "delete web --force"],
    help={
        "name": NAME_HELP,
        "force": "also stop a running VM and remove its disk image",
        "clan_dir": CLAN_DIR_HELP,
    },
)
def delete(c: Context, name: str, force: bool = False, clan_dir: str | None = None) -> None:
    """Delete a VM. Keeps its disk image (and says where) unless --force."""
    from clan_vm_tasks.clan import sync
    from clan_vm_tasks.nix import origin
    from clan_vm_tasks.nix.realise import forget
    from clan_vm_tasks.vm.delete import delete as delete_vm

    check_name(name)
    store, _ = open_store()
    host = store.host_of(name)
    record = origin.load(store, name)
    # Afterwards out of the clan named here and of those it was added to.
    with sync.leaving_clans(store, name, sync.clan_dir(clan_dir), notice):
        kept = delete_vm(store, name, force=force)
        unrooted = forget(store, name, record)  # its Nix GC roots, if it came from a flake
        if kept and host is not None:  # its volume there
            say(f"deleted VM '{name}'{on_host(host)}; its disk is kept as {kept}")
        else:
            kept_at = f"; its disk image is kept at {kept}" if kept else ""
            say(f"deleted VM '{name}'{on_host(host)}{kept_at}")
        if unrooted:
            notice(unrooted)


@vm_task(help={"name": NAME_HELP}, examples=["pause web"])
def pause(c: Context, name: str) -> None:
    """Freeze a running VM (its CPUs stop; memory and devices are kept)."""
    from clan_vm_tasks.vm.pause import pause as pause_vm

    check_name(name)
    store, _ = open_store()
    pause_vm(store, name)
    say(f"paused VM '{name}'{on_host(store.host_of(name))}")


@vm_task(help={"name": NAME_HELP}, examples=["resume web"])
def resume(c: Context, name: str) -> None:
    """Let a paused VM run again."""
    from clan_vm_tasks.vm.pause import resume as resume_vm

    check_name(name)
    store, _ = open_store()
    resume_vm(store, name)
    say(f"resumed VM '{name}'{on_host(store.host_of(name))}")
