"""The QEMU guest agent of a domain, through libvirt (which keeps the channel in sync)."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

from clan_vm_tasks.backends import agent_wire
from clan_vm_tasks.backends.libvirt.connection import Host, LibvirtFailure, lib, qemu_lib
from clan_vm_tasks.errors import AgentError, AgentInvalidReply, AgentUnavailable

# File data per guest-file-read/-write through libvirt (measured: see the README).
CHUNK = 256 << 10


class AgentSession:
    chunk = CHUNK

    def __init__(self, host: Host, dom: Any, timeout: float) -> None:
        self._host = host
        self._dom = dom
        self._timeout = timeout

    def __enter__(self) -> AgentSession:
        # libvirt knows at once when no agent has opened the channel: a cheap probe.
        self.execute("guest-ping", timeout=self._timeout)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        libvirt = lib()
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        seconds = max(1, round(timeout))
        try:
            reply = self._host.call(
                qemu_lib().qemuAgentCommand,
                self._dom,
                json.dumps(request),
                seconds,
                0,
                timeout=seconds + 10,
            )
        except LibvirtFailure as failure:
            if failure.code in (
                libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                libvirt.VIR_ERR_OPERATION_INVALID,
                getattr(libvirt, "VIR_ERR_AGENT_COMMAND_TIMEOUT", 107),  # libvirt >= 9.1
            ):
                raise AgentUnavailable(str(failure)) from None
            raise AgentError(agent_wire.printable(str(failure), 400)) from None
        if not isinstance(reply, str):
            raise AgentInvalidReply(f"libvirt passed on a {type(reply).__name__}, not text")
        return agent_wire.result(command, agent_wire.parse(reply))
