"""What every request must show before it reaches the dashboard (an ASGI middleware).

1. ``Host`` names this server (a DNS-rebinding page reaches us under its own name): 403.
2. The token, as ``?token=``, the HttpOnly SameSite=Strict cookie the page gets for it, or
   ``Authorization: Bearer``: 401 with an empty body otherwise.
3. A request that changes something, and every websocket, carries no foreign ``Origin``
   (CSRF, cross-site websocket hijacking): 403. Browsers always send ``Origin`` there;
   a client without one (curl, a script) is no browser that a foreign page could drive.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clan_vm_tasks.web import address
from clan_vm_tasks.web.address import Listen

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Guard:
    def __init__(self, app: ASGIApp, *, token: str, listen: Listen, names: frozenset[str]) -> None:
        self.app = app
        self.token = token
        self.listen = listen
        self.names = names

    @property
    def cookie(self) -> str:
        # Cookies do not keep ports apart: one per port, so two servers never clash.
        return f"clan-vm-token-{self.listen.port}"

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not address.host_allowed(self.listen, headers.get("host", ""), self.names):
            await _refuse(scope, receive, send, 403, b"this server does not answer to that Host\n")
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        bearer = headers.get("authorization", "")
        from_query = self._matches(query.get("token"))
        if not (
            from_query
            or self._matches(cookie_parser(headers.get("cookie", "")).get(self.cookie))
            or (bearer.startswith("Bearer ") and self._matches(bearer[7:].strip()))
        ):
            await _refuse(scope, receive, send, 401, b"")
            return
        origin = headers.get("origin")
        unsafe = scope["type"] == "websocket" or scope.get("method") not in SAFE_METHODS
        if (
            unsafe
            and origin is not None
            and not address.origin_allowed(self.listen, origin, self.names)
        ):
            await _refuse(scope, receive, send, 403, b"requests from other sites are refused\n")
            return
        if from_query and scope["type"] == "http" and scope.get("method") == "GET":
            await self._login(scope, send, query)
            return
        await self.app(scope, receive, send)

    async def _login(self, scope: Scope, send: Send, query: dict[str, str]) -> None:
        """The URL with the token was opened: keep the token in a cookie and show the page
        without it in the address bar (nor in the browser's history)."""
        rest = urlencode({k: v for k, v in query.items() if k != "token"})
        location = scope.get("path", "/") + (f"?{rest}" if rest else "")
        cookie = f"{self.cookie}={self.token}; HttpOnly; SameSite=Strict; Path=/"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode()),
                    (b"set-cookie", cookie.encode()),
                    (b"cache-control", b"no-store"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, body: bytes) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    message: Message = await receive()  # websocket.connect
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        start = {"type": "websocket.http.response.start", "status": status, "headers": headers}
        await send(start)
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
