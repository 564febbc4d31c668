"""A small synchronous front to ``qemu.qmp``'s async client, with timeouts everywhere.

QEMU's QMP socket serves one client at a time, so sessions are short: connect,
run a few commands, disconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from clan_vm_tasks.errors import ClanVMError

T = TypeVar("T")


class QMPUnavailable(ClanVMError):
    """QMP did not answer (no socket, QEMU gone or hung, another client connected)."""


class QMPCommandFailed(ClanVMError):
    """QEMU answered a command with an error."""


class Monitor:
    def __init__(self, socket: Path, timeout: float = 5.0) -> None:
        from qemu.qmp import QMPClient  # lazy: fast commands never talk QMP

        self._socket = socket
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient("clan-vm")

    def _run(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        return self._loop.run_until_complete(
            asyncio.wait_for(awaitable, timeout if timeout is not None else self._timeout)
        )

    def __enter__(self) -> Monitor:
        from qemu.qmp import QMPError

        try:
            self._run(self._client.connect(str(self._socket)))
        except (QMPError, OSError, TimeoutError) as error:
            self._loop.close()
            raise QMPUnavailable(f"QMP at {self._socket} did not answer: {error}") from None
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._run(self._client.disconnect())
        except Exception:
            pass
        finally:
            self._loop.close()

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        from qemu.qmp import ExecuteError, QMPError

        try:
            return self._run(self._client.execute(command, arguments), timeout)
        except ExecuteError as error:
            raise QMPCommandFailed(f"QEMU refused {command}: {error}") from None
        except (QMPError, OSError, TimeoutError) as error:
            raise QMPUnavailable(f"QMP stopped answering during {command}: {error!r}") from None


def query(socket: Path, command: str, timeout: float = 5.0) -> Any:
    """One command in its own short session."""
    with Monitor(socket, timeout) as monitor:
        return monitor.execute(command)
