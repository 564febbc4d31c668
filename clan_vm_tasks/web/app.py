"""The dashboard as one ASGI application: the page, its static files, the JSON API, the
live stream and the console, behind the guard."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from clan_vm_tasks.web import assets, views
from clan_vm_tasks.web.address import Listen
from clan_vm_tasks.web.api import API
from clan_vm_tasks.web.console import console
from clan_vm_tasks.web.context import Context
from clan_vm_tasks.web.events import Hub
from clan_vm_tasks.web.guard import Guard
from clan_vm_tasks.web.runner import Runner

KEEPALIVE = 15.0
# The page runs only its own scripts and talks only to this server; nobody may frame it.
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@dataclass
class Dashboard:
    app: ASGIApp
    hub: Hub
    runner: Runner


def build(
    ctx: Context,
    listen: Listen,
    token: str,
    names: frozenset[str],
    say: Callable[[str], None],
) -> Dashboard:
    hub = Hub(lambda: views.rows(ctx, ctx.quick_store()))
    runner = Runner(hub)
    api = API(ctx, runner)

    async def page(request: Request) -> Response:
        return Response(assets.page(), media_type="text/html", headers=PAGE_HEADERS)

    async def events(request: Request) -> Response:
        queue = hub.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 1000\n\n"
                while True:
                    try:
                        message = await asyncio.wait_for(queue.get(), KEEPALIVE)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if message is None:
                        return
                    yield message
            finally:
                hub.unsubscribe(queue)

        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def console_socket(websocket: WebSocket) -> None:
        await console(websocket, ctx)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        hub.close()
        await runner.drain(say)

    routes: list[Any] = [
        Route("/", page),
        Route("/api/events", events),
        Route("/api/vms", api.list),
        Route("/api/vms/{name}", api.show, methods=["GET"]),
        Route("/api/vms/{name}", api.delete, methods=["DELETE"]),
        Route("/api/vms/{name}/history", api.history),
        Route("/api/vms/{name}/snapshots", api.snapshots, methods=["GET"]),
        Route("/api/vms/{name}/snapshots", api.snapshot, methods=["POST"]),
        Route("/api/vms/{name}/snapshots/{snapshot}/revert", api.revert, methods=["POST"]),
        Route("/api/vms/{name}/snapshots/{snapshot}", api.delete_snapshot, methods=["DELETE"]),
        Route("/api/vms/{name}/{action}", api.act, methods=["POST"]),
        WebSocketRoute("/api/vms/{name}/console", console_socket),
        Mount("/static/vendor", StaticFiles(directory=assets.check_vendor())),
        Mount("/static", StaticFiles(directory=assets.STATIC)),
    ]

    async def not_here(request: Request, exc: Exception) -> Response:
        """An unknown path or method: JSON under /api, like every other answer there."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(getattr(exc, "detail", exc))}, status_code=status)
        return PlainTextResponse(str(getattr(exc, "detail", "")), status_code=status)

    handlers: dict[Any, Any] = {HTTPException: not_here}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    guarded = Guard(app, token=token, listen=listen, names=names)
    return Dashboard(guarded, hub, runner)
