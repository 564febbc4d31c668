"""Running operations for the page: each in a worker thread of its own, so a long start
blocks neither the server nor other VMs; every open page sees it begin, its progress
(``action`` events) and how it ended. At shutdown the server waits for what runs."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.render import Notify
from clan_vm_tasks.web.events import Hub

log = logging.getLogger("clan_vm_tasks.web")
WORKERS = 16  # operations at once; more wait their turn (each VM's lock serialises anyway)


@dataclass
class Running:
    id: int
    vm: str
    action: str
    started: float = field(default_factory=time.time)
    progress: str | None = None
    state: str = "running"  # then "ok" or "failed"
    message: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "vm": self.vm,
            "action": self.action,
            "started": self.started,
            "state": self.state,
            "progress": self.progress,
            "message": self.message,
        }


class Runner:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="clan-vm-action")
        self._ids = itertools.count(1)
        self.running: dict[int, Running] = {}

    async def run(
        self, vm: str, action: str, work: Callable[[Notify], dict[str, Any]]
    ) -> dict[str, Any]:
        """WORK(notify) in a worker thread; its result, or its ClanVMError raised here."""
        loop = asyncio.get_running_loop()
        entry = Running(next(self._ids), vm, action)
        self.running[entry.id] = entry

        def progress(text: str) -> None:
            entry.progress = text.strip()
            self._hub.publish("action", entry.view())

        def notify(text: str) -> None:  # from the worker thread
            loop.call_soon_threadsafe(progress, text)

        self._hub.publish("action", entry.view())
        self._hub.wake()
        try:
            result = await loop.run_in_executor(self._pool, work, notify)
            entry.state, entry.message = "ok", str(result.get("message"))
            return result
        except ClanVMError as error:
            entry.state, entry.message = "failed", str(error)
            raise
        except OSError as error:  # as the command line reports it: a failed operation
            entry.state, entry.message = "failed", str(error)
            raise ClanVMError(str(error)) from None
        except Exception as error:
            log.exception("%s of %s failed unexpectedly", action, vm)
            entry.state, entry.message = "failed", f"unexpected error: {error!r}"
            raise
        finally:
            self.running.pop(entry.id, None)
            self._hub.publish("action", entry.view())
            self._hub.wake()

    async def drain(self, say: Callable[[str], None]) -> None:
        """Wait for the operations under way (the server is stopping)."""
        if self.running:
            what = ", ".join(f"{r.action} of '{r.vm}'" for r in self.running.values())
            say(f"waiting for {what} to finish (Ctrl-C again to leave now)")
        while self.running:
            await asyncio.sleep(0.1)
        self._pool.shutdown(wait=False)
