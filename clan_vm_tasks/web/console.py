"""``/api/vms/NAME/console``: a VM's serial console over a websocket.

Binary frames carry bytes both ways (what the guest prints, what the user types); text
frames from the server are JSON notes (``{"attached": NAME}``, ``{"error": ...,
"status": N}``, ``{"closed": why}``). The console is the command line's: the same
one-client lock, so a second viewer (in a browser or a terminal) is told it is in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from starlette.websockets import WebSocket, WebSocketDisconnect

from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.names import check_name
from clan_vm_tasks.vm.console import open_console
from clan_vm_tasks.web.context import Context
from clan_vm_tasks.web.problems import status_of

BACKLOG = 512  # chunks of output a slow page may fall behind by before some are dropped
RECENT = 4096  # bytes of the console log shown first
DROPPED = b"\r\n[output dropped: the page could not keep up]\r\n"


def _recent(ctx: Context, name: str) -> bytes:
    """The end of what a local VM printed so far, so the terminal does not start blank (a VM
    on a libvirt host has its log there: it starts with what comes next)."""
    store = ctx.quick_store()
    if store.host_of(name) is not None:
        return b""
    try:
        with open(store.paths(name).console_log, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - RECENT))
            return log.read()
    except OSError:
        return b""


async def console(websocket: WebSocket, ctx: Context) -> None:
    name = websocket.path_params["name"]
    await websocket.accept()
    loop = asyncio.get_running_loop()
    output: asyncio.Queue[bytes] = asyncio.Queue(BACKLOG)
    dropped = False

    def deliver(data: bytes) -> None:
        nonlocal dropped
        try:
            if dropped and data:
                output.put_nowait(DROPPED)
                dropped = False
            output.put_nowait(data)
        except asyncio.QueueFull:
            dropped = True

    def on_data(data: bytes) -> None:  # from the console's reader thread
        loop.call_soon_threadsafe(deliver, data)

    held = contextlib.ExitStack()
    try:
        check_name(name)
        stream = await asyncio.to_thread(
            held.enter_context, open_console(ctx.store(), name, on_data)
        )
    except ClanVMError as error:
        status = status_of(error)
        await websocket.send_json({"error": str(error), "status": status})
        await websocket.close(code=4000 + status)
        return
    try:
        await websocket.send_json({"attached": name})
        recent = await asyncio.to_thread(_recent, ctx, name)
        if recent:
            await websocket.send_bytes(recent)

        async def show() -> str:
            while True:
                data = await output.get()
                if not data:
                    return "the console closed (the VM stopped)"
                await websocket.send_bytes(data)

        async def type_in() -> str:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return "the page left"
                data = message.get("bytes") or (message.get("text") or "").encode()
                if data and not await asyncio.to_thread(stream.send, data):
                    return "the console closed (the VM stopped)"

        tasks = [asyncio.create_task(show()), asyncio.create_task(type_in())]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        why = next(iter(done)).result()
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await websocket.send_json({"closed": why})
            await websocket.close()
    except (WebSocketDisconnect, OSError):
        pass
    finally:
        await asyncio.to_thread(held.close)
