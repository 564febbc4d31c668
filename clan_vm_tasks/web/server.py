"""Running the dashboard on uvicorn: bind, print the URL with a fresh token, serve until
Ctrl-C (or SIGTERM, SIGHUP), then end every stream and wait for operations under way.
No VM depends on the server: QEMU runs daemonized as it does from the command line."""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn

from clan_vm_tasks.errors import ClanVMError
from clan_vm_tasks.web import address, app
from clan_vm_tasks.web.address import Listen
from clan_vm_tasks.web.context import Context

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class DashboardServer(uvicorn.Server):
    """uvicorn's server, but ending the live streams first (they would keep it waiting),
    and taking the signals for itself: Ctrl-C is how a user ends it, not a failure."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop = on_stop

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: object) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_stop()
        await super().shutdown(sockets)


class _DenialIsNoError(logging.Filter):
    """uvicorn 0.54's websockets-sansio logs a refused websocket (the guard's 401 or 403
    denial response, which it sends correctly) as an error: it is none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing handshake" not in record.getMessage()


def bind(listen: Listen) -> socket.socket:
    sock = socket.socket(listen.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listen.bind_host(), listen.port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise ClanVMError(
            f"cannot listen on {listen.host}:{listen.port}: {error.strerror}"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(ctx: Context, listen: Listen, allow_remote: bool, say: Callable[[str], None]) -> None:
    address.refuse_remote(listen, allow_remote)
    sock = bind(listen)
    listen = Listen(listen.host, sock.getsockname()[1])
    token = secrets.token_urlsafe(32)
    names = address.own_names() if listen.wildcard else frozenset()
    dashboard = app.build(ctx, listen, token, names, say)
    config = uvicorn.Config(
        dashboard.app,
        ws="websockets-sansio",
        http="h11",
        lifespan="on",
        log_level="warning",
        access_log=False,
        ws_max_size=1 << 20,
        timeout_graceful_shutdown=10,
    )
    server = DashboardServer(config, dashboard.hub.close)
    logging.getLogger("uvicorn.error").addFilter(_DenialIsNoError())
    # From here on a signal ends the server cleanly, even one that comes before it runs.
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in SIGNALS}
    try:
        if not listen.loopback:
            say(
                f"warning: listening on {listen.host}:{listen.port}: anyone who can reach it "
                "with the token controls the VMs (and plain HTTP shows the token to the network)"
            )
        if ctx.flake is not None:
            say(f"showing the VMs the flake {ctx.flake.label} declares, too")
        say(f"serving the dashboard; open http://{listen.url_host()}:{listen.port}/?token={token}")
        say("Ctrl-C stops the server (the VMs keep running)")
        server.run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say("stopped serving")
