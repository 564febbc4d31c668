"""A real ``clan-vm-manager serve`` for the dashboard's tests, and clients that talk to it
as a browser or a script would: HTTP with http.client, the event stream, websockets."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.conftest import CLI

HEADLESS = [  # Chromium hangs on this closed network without the background-networking ones
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Served:
    process: subprocess.Popen[str]
    url: str  # what serve printed: http://HOST:PORT/?token=TOKEN
    lines: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.url.split("/?", 1)[0]

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    @property
    def token(self) -> str:
        return self.url.split("token=", 1)[1]

    @property
    def origin(self) -> str:
        return self.base

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "bearer",
        headers: dict[str, str] | None = None,
        timeout: float = 180,
    ) -> Reply:
        """METHOD PATH; with the token as ``Authorization: Bearer`` unless TOKEN is None
        (no token) or another string (that token)."""
        sent = dict(headers or {})
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token if token == 'bearer' else token}")
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            return Reply(
                response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            )
        finally:
            conn.close()

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        reply = self.request(method, path, body)
        assert reply.status == 200, (method, path, reply.status, reply.body)
        return reply.json()

    def websocket(
        self, path: str, *, token: bool = True, origin: str | None = None
    ) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.token}"} if token else {}
        ws_url = self.base.replace("http://", "ws://") + path
        return connect(ws_url, additional_headers=headers, origin=origin, open_timeout=30)  # type: ignore[arg-type]

    def events(self) -> EventStream:
        return EventStream(self)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> tuple[int, str, str]:
        """End the server as a user does; its exit code and what it printed."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, "".join(self.lines) + out, err


class EventStream:
    """``GET /api/events`` read as EventSource reads it."""

    def __init__(self, served: Served) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
        self.conn.request("GET", "/api/events", headers={"Authorization": f"Bearer {served.token}"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("content-type", "").startswith("text/event-stream")

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        event, data = "message", ""
        while True:
            line = self.response.readline()
            if not line:
                return
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: "):
                data += text[6:]
            elif text == "" and data:
                yield event, json.loads(data)
                event, data = "message", ""

    def until(self, wanted: Any, timeout: float = 120) -> list[tuple[str, Any]]:
        """Events until WANTED(event, data) is true; all of them, that one last."""
        deadline = time.monotonic() + timeout
        seen = []
        for event, data in self:
            seen.append((event, data))
            if wanted(event, data):
                return seen
            assert time.monotonic() < deadline, f"not within {timeout}s: {seen[-5:]}"
        raise AssertionError(f"the stream ended: {seen[-5:]}")

    def close(self) -> None:
        self.conn.close()


def serve(cli: CLI, *args: str, cwd: Path, env: dict[str, str] | None = None) -> Served:
    """Start ``serve --listen 127.0.0.1:0 ARGS`` and wait for the URL it prints."""
    process = subprocess.Popen(
        [*cli.command(), "serve", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**cli.env, **(env or {})},
        cwd=cwd,
    )
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "open http://" in line:
            url = line.split("open ", 1)[1].strip()
            return Served(process, url, lines)
    process.kill()
    out, err = process.communicate()
    raise AssertionError(f"serve printed no URL: {''.join(lines)}{out}{err}")
