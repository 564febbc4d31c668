"""The live stream (``GET /api/events``, server-sent events) and the one poller behind it.

However many pages are open, one task lists the VMs (``list --json``, with ``--flake``
rows when serve has a flake) while any page listens: every half second, sooner when an
action changes something, and never more than a fifth of the time (a slow host or a
large flake widens the gap). A new page gets the whole list (``vms``), then only what
changed (``changes``: rows that differ, names that are gone); actions report as
``action`` events; a failing listing as ``problem``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from clan_vm_tasks.errors import ClanVMError

INTERVAL = 0.5
QUEUE = 256  # events a page may fall behind by; a page further behind is dropped (it reconnects)

Rows = list[dict[str, Any]]


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def diff(before: dict[str, dict[str, Any]], after: Rows) -> dict[str, Any] | None:
    """What changed between two listings; None when nothing did."""
    changed = [row for row in after if before.get(row["name"]) != row]
    now = {row["name"] for row in after}
    removed = [name for name in before if name not in now]
    return {"changed": changed, "removed": removed} if changed or removed else None


class Hub:
    def __init__(self, listing: Callable[[], Rows], interval: float = INTERVAL) -> None:
        self._listing = listing
        self._interval = interval
        self._pages: set[asyncio.Queue[str | None]] = set()
        self._rows: dict[str, dict[str, Any]] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._problem: str | None = None
        self.closing = False
        self.polls = 0  # for tests and the benchmark: listings made

    def subscribe(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE)
        self._pages.add(queue)
        if self._rows is not None:
            queue.put_nowait(sse("vms", list(self._rows.values())))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())
        self.wake()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str | None]) -> None:
        self._pages.discard(queue)

    def wake(self) -> None:
        """List again now (an action began or ended)."""
        self._wake.set()

    def publish(self, event: str, data: Any) -> None:
        message = sse(event, data)
        for queue in list(self._pages):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:  # a page that does not read: it reconnects afresh
                self._drop(queue)

    def _drop(self, queue: asyncio.Queue[str | None]) -> None:
        self._pages.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

    def close(self) -> None:
        """The server is going: every stream ends, the poller stops."""
        self.closing = True
        for queue in list(self._pages):
            self._drop(queue)
        self.wake()

    async def _poll(self) -> None:
        try:
            while self._pages and not self.closing:
                self._wake.clear()
                began = time.monotonic()
                await self._list_once()
                took = time.monotonic() - began
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(self._interval, 4 * took))
        finally:
            self._task = None
            self._rows = None  # no page listens: the next one must not see an old list

    async def _list_once(self) -> None:
        try:
            rows = await asyncio.to_thread(self._listing)
        except ClanVMError as error:
            if str(error) != self._problem:
                self._problem = str(error)
                self.publish("problem", {"error": self._problem})
            return
        self.polls += 1
        if self._problem is not None:
            self._problem = None
            self.publish("problem", {"error": None})
        if self._rows is None:
            self.publish("vms", rows)
        else:
            changes = diff(self._rows, rows)
            if changes:
                self.publish("changes", changes)
        self._rows = {row["name"]: row for row in rows}
