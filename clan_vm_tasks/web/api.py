"""The JSON API under the page, the command line's JSON:

    GET    /api/vms                       list --json (--flake rows when serve has a flake)
    GET    /api/vms/NAME                  show NAME --json
    GET    /api/vms/NAME/history          history --vm NAME --json
    GET    /api/vms/NAME/snapshots        snapshots NAME --json
    POST   /api/vms/NAME/ACTION           start, stop ({"force": true}), restart, pause, resume
    POST   /api/vms/NAME/snapshots        snapshot NAME {"name": SNAP, "live": false}
    POST   /api/vms/NAME/snapshots/SNAP/revert
    DELETE /api/vms/NAME/snapshots/SNAP   snapshot NAME SNAP --delete
    DELETE /api/vms/NAME                  delete NAME ({"force": true}: also its disk)

An action answers when it is done: ``{"message": ...}`` as the command line says it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from clan_vm_tasks.errors import ClanVMError, InvalidInput
from clan_vm_tasks.render import Notify
from clan_vm_tasks.web import actions, views
from clan_vm_tasks.web.actions import Action, Body
from clan_vm_tasks.web.context import Context
from clan_vm_tasks.web.problems import status_of
from clan_vm_tasks.web.runner import Runner

log = logging.getLogger("clan_vm_tasks.web")
MAX_BODY = 64 * 1024


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def answer(call: Callable[[], Any]) -> Response:
    """CALL's result as JSON; our errors as their status, anything else without a trace."""
    try:
        return JSONResponse(await asyncio.to_thread(call))
    except ClanVMError as failure:
        return error(status_of(failure), str(failure))
    except OSError as failure:
        return error(500, str(failure))
    except Exception as failure:
        log.exception("unexpected error")
        return error(500, f"unexpected error: {failure!r}")


async def body_of(request: Request) -> Body:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise InvalidInput("the request body is too large")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidInput("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object")
    return data


class API:
    def __init__(self, ctx: Context, runner: Runner) -> None:
        self.ctx = ctx
        self.runner = runner

    async def list(self, request: Request) -> Response:
        query = request.query_params
        return await answer(lambda: views.vm_list(self.ctx, query.get("filter"), query.get("host")))

    async def show(self, request: Request) -> Response:
        name = request.path_params["name"]
        return await answer(lambda: views.vm_show(self.ctx, name))

    async def history(self, request: Request) -> Response:
        name = request.path_params["name"]
        limit_text = request.query_params.get("limit")
        if limit_text is not None and not (limit_text.isascii() and limit_text.isdigit()):
            return error(400, f"limit must be a whole number, not {limit_text!r}")
        limit = int(limit_text) if limit_text else None
        return await answer(lambda: views.vm_history(self.ctx, name, limit))

    async def snapshots(self, request: Request) -> Response:
        name = request.path_params["name"]
        return await answer(lambda: views.vm_snapshots(self.ctx, name))

    async def _run(self, request: Request, action: str, work: Action, extra: Body) -> Response:
        name = request.path_params["name"]
        try:
            body = {**await body_of(request), **extra}
        except ClanVMError as failure:
            return error(status_of(failure), str(failure))

        def call(notify: Notify) -> dict[str, Any]:
            return work(self.ctx, name, body, notify)

        try:
            return JSONResponse(await self.runner.run(name, action, call))
        except ClanVMError as failure:
            return error(status_of(failure), str(failure))
        except Exception as failure:
            return error(500, f"unexpected error: {failure!r}")

    async def act(self, request: Request) -> Response:
        action = request.path_params["action"]
        work = actions.ACTIONS.get(action)
        if work is None:
            return error(404, f"no action {action!r}: use one of {', '.join(actions.ACTIONS)}")
        return await self._run(request, action, work, {})

    async def delete(self, request: Request) -> Response:
        extra: Body = {}
        if request.query_params.get("force") in ("1", "true"):
            extra["force"] = True
        return await self._run(request, "delete", actions.delete, extra)

    async def snapshot(self, request: Request) -> Response:
        return await self._run(request, "snapshot", actions.snapshot, {})

    async def revert(self, request: Request) -> Response:
        snap = request.path_params["snapshot"]
        return await self._run(request, "revert", actions.revert, {"snapshot": snap})

    async def delete_snapshot(self, request: Request) -> Response:
        snap = request.path_params["snapshot"]
        extra = {"snapshot": snap}
        return await self._run(request, "snapshot-delete", actions.delete_snapshot, extra)
