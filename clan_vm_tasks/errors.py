"""Errors the user sees as one line; the exit code tells input mistakes from failures."""

from __future__ import annotations


class ClanVMError(Exception):
    """A failed operation: exit code 1."""

    exit_code = 1


class InvalidInput(ClanVMError):
    """The request itself is wrong (bad value, unknown VM): exit code 2."""

    exit_code = 2


class UnknownVM(InvalidInput):
    def __init__(self, name: str, known: list[str] | None = None) -> None:
        close = close_match(name, known or [])
        hint = f"; did you mean '{close}'?" if close else " (see: clan-vm-manager list)"
        super().__init__(f"no VM named '{name}'{hint}")


def close_match(word: str, choices: list[str]) -> str | None:
    """What WORD was probably meant to be, among CHOICES (a typo's way out)."""
    import difflib  # lazy: only a mistake pays for it

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived while an operation had to finish or undo itself (like
    Ctrl-C's KeyboardInterrupt, not an Exception: no handler takes it for a failure)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class InterruptedWait(ClanVMError):
    """Ctrl-C while a command waited for a VM it leaves running: exit code 130, as for any
    Ctrl-C, and a message that says so."""

    exit_code = 130


class AgentUnavailable(ClanVMError):
    """The guest agent did not answer (none in the guest, not started yet, or busy)."""


class AgentError(ClanVMError):
    """The guest agent answered a command with an error."""


class AgentInvalidReply(ClanVMError):
    """The guest agent sent something that is not a valid reply (too big, too deep, not JSON,
    not the shape the command answers with). The guest is not trusted: this is an error about
    the guest, never ours. DETAIL says what was wrong, without the VM."""

    def __init__(self, detail: str, name: str | None = None) -> None:
        who = f" of VM '{name}'" if name else ""
        super().__init__(f"the guest agent{who} sent an invalid reply: {detail}")
        self.detail = detail


class GuestCommandFailed(ClanVMError):
    """A command run in the guest could not be started (127: not found, 126: not runnable),
    exiting as a shell would."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StateConflict(ClanVMError):
    """The operation makes no sense in the VM's current state (e.g. stop a stopped VM)."""


class Busy(StateConflict):
    """Another command still holds what this one needs (a VM's lock, its guest agent)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is busy: another command is still working on it")


class AlreadyExists(StateConflict):
    """A VM of that name exists (made meanwhile by another command, perhaps)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"VM '{name}' already exists")


class HostUnreachable(ClanVMError):
    """The host of a VM did not answer (in time): its VMs' state is unknown, not stopped."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"host {host} is unreachable: {reason}")
        self.host = host
        self.reason = reason
