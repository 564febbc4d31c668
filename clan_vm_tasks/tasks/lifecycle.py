"""The lifecycle tasks: create, start, stop, restart, delete, pause, resume.

Each parses its options, calls the operation in ``clan_vm_tasks.vm`` and prints
what happened; a flake (``--flake``, or one around the working directory that
declares the VM) is evaluated and built first.
"""

from __future__ import annotations

from invoke.context import Context

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.names import check_name, check_new_name
from clan_vm_tasks.render import notice
from clan_vm_tasks.tasks.common import (
    ALLOW_QEMU_ARGS_HELP,
    CLAN_DIR_HELP,
    FLAKE_HELP,
    NAME_HELP,
    number,
    open_store,
    say,
    vm_task,
)


def _create_from_flake(option: str, name: str, allow_qemu_args: bool) -> None:
    from clan_vm_tasks.nix import flakes
    from clan_vm_tasks.nix.prepare import prepare

    store, settings = open_store()
    existed = store.exists(name)
    config = prepare(store, settings, flakes.chosen(option), name, notice, allow_qemu_args)
    if existed:
        say(f"VM '{name}' is up to date with its definition")
    else:
        say(
            f"created VM '{name}': {config.cpus} cpus, {config.memory} MiB memory, "
            f"{config.disk_size} MiB disk at {store.paths(name).disk}"
        )


@vm_task(
    iterable=["qemu_arg", "forward"],
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
        "clan_dir": CLAN_DIR_HELP,
        "flake": "create (or update) the VM from this flake's clanVms definition instead",
        "allow_qemu_args": ALLOW_QEMU_ARGS_HELP,
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
    flake: str | None = None,
    allow_qemu_args: bool = False,
) -> None:
    """Create a VM: validate its definition, make its qcow2 disk, record it stopped."""
    from clan_vm_tasks.clan import sync
    from clan_vm_tasks.models import PortForward, VMConfig, validate
    from clan_vm_tasks.vm.create import create as create_vm

    check_new_name(name)
    if flake:
        _create_from_flake(flake, name, allow_qemu_args)
        store, _ = open_store()
        sync.push(store, name, sync.clan_dir(clan_dir, flake), notice)
        return
    disk_size = number(disk, "disk", 20480)
    if from_image and disk is None:
        from pathlib import Path

        from clan_vm_tasks.vm import machines

        base = Path(from_image)
        if not base.is_file():
            raise InvalidInput(f"base image {base} does not exist or is not a file")
        disk_size = machines.backend().check_base_image(base)  # an overlay is as large as its base
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
            "forward_ports": [PortForward.parse(f) for f in forward or []],
        },
        "qemu_args": list(qemu_arg or []),
    }
    config = validate(VMConfig, definition, "VM definition")
    store, _ = open_store()
    config = create_vm(store, config)
    sync.push(store, name, sync.clan_dir(clan_dir), notice)
    say(
        f"created VM '{name}': {config.cpus} cpus, {config.memory} MiB memory, "
        f"{config.disk_size} MiB disk at {store.paths(name).disk}"
    )


@vm_task(
    help={
        "name": NAME_HELP,
        "foreground": "run QEMU attached to this command and stream the console",
        "wait_for": "return only after this text appears on the serial console",
        "timeout": "seconds to wait for --wait-for (default 60)",
        "accel": "override the accelerator: kvm or tcg",
        "clan_dir": CLAN_DIR_HELP,
        "flake": FLAKE_HELP,
        "allow_qemu_args": ALLOW_QEMU_ARGS_HELP,
    }
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
) -> None:
    """Start a VM; returns once QEMU answers on QMP (and --wait-for text appeared)."""
    from clan_vm_tasks.clan import sync
    from clan_vm_tasks.vm.start import start as start_vm

    check_name(name)
    seconds = number(timeout, "timeout", 60, float)
    store, settings = open_store(accel)
    from clan_vm_tasks.nix.prepare import apply_flake

    apply_flake(store, settings, flake, name, notice, allow_qemu_args)
    clan = sync.clan_dir(clan_dir, flake)
    if foreground:  # start only returns when the VM is gone again
        sync.push(store, name, clan, notice)
    started = start_vm(
        store,
        settings,
        name,
        wait_for=wait_for or None,
        timeout=seconds,
        accel=accel,
        foreground=foreground,
    )
    if not foreground:
        sync.push(store, name, clan, notice)
        how = (
            f"{wait_for!r} appeared after {started.seconds:.1f}s"
            if wait_for
            else (f"QMP answered after {started.seconds:.1f}s")
        )
        say(f"started VM '{name}' (pid {started.pid}, {started.accel}): {how}")


@vm_task(
    help={
        "name": NAME_HELP,
        "force": "skip the graceful steps: end QEMU at once",
        "timeout": "seconds the guest gets to power off after the ACPI button (default 30)",
    }
)
def stop(c: Context, name: str, force: bool = False, timeout: str | None = None) -> None:
    """Stop a VM: ACPI power button, then QMP quit, SIGTERM, SIGKILL; says which step ended it."""
    from clan_vm_tasks.vm.stop import DEFAULT_STOP_TIMEOUT
    from clan_vm_tasks.vm.stop import stop as stop_vm

    check_name(name)
    seconds = number(timeout, "timeout", DEFAULT_STOP_TIMEOUT, float)
    store, _ = open_store()
    stopped = stop_vm(store, name, force=force, timeout=seconds)
    say(f"stopped VM '{name}' after {stopped.seconds:.1f}s: {stopped.words} ({stopped.step})")


@vm_task(
    help={
        "name": NAME_HELP,
        "timeout": "seconds the guest gets to power off (default 30)",
        "wait_for": "return only after this text appears on the console again",
    }
)
def restart(c: Context, name: str, timeout: str | None = None, wait_for: str | None = None) -> None:
    """Stop a VM gracefully (if running) and start it again."""
    from clan_vm_tasks.vm.restart import restart as restart_vm
    from clan_vm_tasks.vm.stop import DEFAULT_STOP_TIMEOUT

    check_name(name)
    seconds = number(timeout, "timeout", DEFAULT_STOP_TIMEOUT, float)
    store, settings = open_store()
    started = restart_vm(store, settings, name, timeout=seconds, wait_for=wait_for or None)
    say(f"restarted VM '{name}' (pid {started.pid}, {started.accel})")


@vm_task(
    help={
        "name": NAME_HELP,
        "force": "also stop a running VM and remove its disk image",
        "clan_dir": CLAN_DIR_HELP,
    }
)
def delete(c: Context, name: str, force: bool = False, clan_dir: str | None = None) -> None:
    """Delete a VM. Keeps its disk image (and says where) unless --force."""
    from clan_vm_tasks.clan import sync
    from clan_vm_tasks.nix.realise import forget
    from clan_vm_tasks.vm.delete import delete as delete_vm

    check_name(name)
    store, _ = open_store()
    kept = delete_vm(store, name, force=force)
    forget(store, name)  # its Nix GC roots, if it came from a flake
    say(f"deleted VM '{name}'" + (f"; its disk image is kept at {kept}" if kept else ""))
    sync.forget(store, name, sync.clan_dir(clan_dir), notice)


@vm_task(help={"name": NAME_HELP})
def pause(c: Context, name: str) -> None:
    """Freeze a running VM (its CPUs stop; memory and devices are kept)."""
    from clan_vm_tasks.vm.pause import pause as pause_vm

    check_name(name)
    store, _ = open_store()
    pause_vm(store, name)
    say(f"paused VM '{name}'")


@vm_task(help={"name": NAME_HELP})
def resume(c: Context, name: str) -> None:
    """Let a paused VM run again."""
    from clan_vm_tasks.vm.pause import resume as resume_vm

    check_name(name)
    store, _ = open_store()
    resume_vm(store, name)
    say(f"resumed VM '{name}'")
