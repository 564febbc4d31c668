"""The QEMU guest agent of a domain, through libvirt (which keeps the channel in sync)."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

from clan_vm_tasks.backends import agent_wire
from clan_vm_tasks.backends.libvirt.connection import Host, LibvirtFailure, lib, qemu_lib
from clan_vm_tasks.errors import AgentError, AgentInvalidReply, AgentUnavailable

# libvirt (9.0) writes a command to the agent's socket without blocking and, when the socket
# takes only part of it, sends the part again: the agent gets garbage and never answers (a
# copy of 1 MB in failed after a minute). A command that fits into one buffer of a unix
# socket (half its default send buffer of 212992 bytes, less overhead) is never split:
# 64 KiB of data is 87 KB of JSON. Replies are read whole, so reads may ask for more.
READ_CHUNK = 1 << 20
WRITE_CHUNK = 64 << 10


class AgentSession:
    read_chunk = READ_CHUNK
    write_chunk = WRITE_CHUNK

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
