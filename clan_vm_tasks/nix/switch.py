"""``switch NAME``: a running VM of a NixOS configuration brought to the configuration's
current state in place, as ``nixos-rebuild test`` brings a machine: the VM variant of the
configuration is evaluated and built (and rooted) on the host, where the guest sees it at
once through the host's store it mounts over 9p; then its
``bin/switch-to-configuration test`` runs in the guest through the guest agent, and its
output and exit code are the command's. A system whose kernel, initrd or kernel parameters
changed needs the VM restarted to boot them: the user is told, or ``--restart`` does it (the
VM then boots the new system, which activates itself).

The VM's definition is not rewritten while it runs: its next start (or restart) evaluates
the flake again and boots the system it then declares.
"""

from __future__ import annotations

import dataclasses
import filecmp
import os
from collections.abc import Callable
from dataclasses import dataclass

from clan_vm_tasks.errors import ClanVMError, InvalidInput, StateConflict
from clan_vm_tasks.models import VMConfig
from clan_vm_tasks.nix import launch
from clan_vm_tasks.nix.command import STORE_DIR
from clan_vm_tasks.nix.prepare import plan, source
from clan_vm_tasks.nix.request import Request
from clan_vm_tasks.state import history
from clan_vm_tasks.vm import definition, guest, reconcile
from clan_vm_tasks.vm.agent import session

ACTION = "test"  # activate now; the next boot is the tool's (direct boot), not a boot loader's
SWITCH = "bin/switch-to-configuration"


@dataclass(frozen=True)
class Switched:
    system: str  # the system now running (or booting, when restarted)
    boot_changes: list[str]  # what of the boot differs: a restart is needed to use it
    result: guest.ExecResult | None = None  # what switch-to-configuration did
    restarted: bool = False


def system_of(config: VMConfig) -> str | None:
    """The NixOS system a definition boots: ``init=SYSTEM/init`` on its kernel command line."""
    for word in (config.append or "").split():
        if word.startswith("init=" + STORE_DIR + "/") and word.endswith("/init"):
            return word[len("init=") : -len("/init")]
    return None


def _same_file(a: object, b: object) -> bool:
    """Whether A and B are one file: the same store path, or the same bytes (a kernel copied
    into the store again with the flake it came from is the same kernel)."""
    if a is None or b is None:
        return a is b
    first, second = os.path.realpath(str(a)), os.path.realpath(str(b))
    try:
        return first == second or filecmp.cmp(first, second, shallow=False)
    except OSError:
        return False


def _parameters(append: str | None) -> list[str]:
    """The kernel parameters, without the words that name the system and its registration
    (those change with every system, and need no reboot)."""
    return [w for w in (append or "").split() if not w.startswith(("init=", "regInfo="))]


def boot_changes(running: VMConfig, new: VMConfig) -> list[str]:
    """What NEW boots differently from RUNNING: the kernel, the initrd, the kernel parameters."""
    changes = []
    if not _same_file(running.kernel, new.kernel):
        changes.append("kernel")
    if not _same_file(running.initrd, new.initrd):
        changes.append("initrd")
    if _parameters(running.append) != _parameters(new.append):
        changes.append("kernel parameters")
    return changes


def _running(request: Request) -> VMConfig:
    """The definition the running VM boots; refused when switching cannot reach it."""
    store, name = request.store, request.name
    store.require(name)
    state = reconcile.current(store, name)
    if state.status not in reconcile.ACTIVE:
        raise StateConflict(
            f"VM '{name}' is not running (it is {state.status}); start it, which boots the "
            "configuration as it is now"
        )
    config = definition.load(store, name)
    if config.nixos_configuration is None or system_of(config) is None:
        raise InvalidInput(
            f"VM '{name}' is not the VM of a NixOS configuration (nixosConfiguration); "
            f"restart it to apply a changed definition: clan-vm-manager restart {name}"
        )
    return config


def _reachable(config: VMConfig) -> str | None:
    """Why the guest cannot activate a new system in place, or None."""
    if not any(share.source is not None and str(share.source) == STORE_DIR
               for share in config.shares.values()):  # fmt: skip
        return "it does not mount the host's store (virtualisation.mountHostNixStore = false)"
    if not config.agent:
        return "it has no guest agent (virtualisation.qemu.guestAgent.enable = false)"
    return None


def switch(
    request: Request,
    *,
    restart: bool,
    timeout: float,
    relaunch: Callable[[Callable[[], None]], object],
) -> Switched:
    """Build the changed VM variant of REQUEST's VM and activate it in the running guest, or
    (RESTART, and its boot changed) RELAUNCH the VM with it: relaunch(before_start) stops the
    VM, runs before_start (which applies the new definition) and starts it again."""
    store, name = request.store, request.name
    running = _running(request)
    found = source(request)
    if found is None:
        raise InvalidInput(f"VM '{name}' was not created from a flake: there is nothing to build")
    planned = plan(request, found)
    system = system_of(planned.config)
    if system is None:
        raise InvalidInput(
            f"the definition of '{name}' in {found.flake.label} no longer boots a NixOS system "
            f"(no init= in append): restart it instead"
        )
    changes = boot_changes(running, planned.config)
    unreachable = _reachable(running)
    if unreachable and not restart:
        raise ClanVMError(
            f"VM '{name}' cannot switch in place: {unreachable}; restart it with the new "
            f"system: clan-vm-manager switch {name} --restart"
        )
    if restart and (changes or unreachable):
        launch.restart(dataclasses.replace(request, flake=found.flake.ref), relaunch)
        why = ", ".join(changes) or unreachable
        history.record(store.history, name, "switch", f"to {system}, restarted ({why} changed)")
        return Switched(system, changes, restarted=True)
    with (
        history.failures_recorded(store.history, name, "switch"),
        session(store, name, guest.AGENT_WAIT) as agent,
    ):
        try:
            ran = guest.run(agent, [f"{system}/{SWITCH}", ACTION], timeout)
        except ClanVMError as error:
            raise ClanVMError(
                f"VM '{name}' could not run {system}/{SWITCH} {ACTION}: {error} (does the "
                "guest see the host's store at /nix/store?)"
            ) from None
    outcome = f"{SWITCH} {ACTION} exited {ran.exit_code}"
    later = f"; {', '.join(changes)} changed: a restart boots them" if changes else ""
    history.record(
        store.history,
        name,
        "switch",
        f"to {system}: {outcome}{later}",
        result="ok" if ran.exit_code == 0 else "failed",
    )
    return Switched(system, changes, ran)
