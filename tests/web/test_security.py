"""Every refusal the dashboard owes (the token, Host, Origin, websocket Origin), how it
listens, and how it ends: against a real ``serve`` over real HTTP and websockets."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import CLI
from tests.web.served import Served, serve


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("web-security")
    cli = CLI(home / "state")
    served = serve(cli, cwd=home)
    yield served
    served.stop()


PATHS = [
    ("GET", "/"),
    ("GET", "/static/app.js"),
    ("GET", "/static/vendor/xterm/xterm.mjs"),
    ("GET", "/api/vms"),
    ("GET", "/api/vms/web"),
    ("GET", "/api/vms/web/history"),
    ("GET", "/api/vms/web/snapshots"),
    ("GET", "/api/events"),
    ("POST", "/api/vms/web/start"),
    ("POST", "/api/vms/web/stop"),
    ("POST", "/api/vms/web/snapshots"),
    ("DELETE", "/api/vms/web"),
    ("GET", "/no/such/page"),
]


@pytest.mark.parametrize(("method", "path"), PATHS)
def test_without_the_token_every_request_is_401_and_nothing_else(
    web: Served, method: str, path: str
) -> None:
    for token in (None, "wrong", web.token[:-1]):
        reply = web.request(method, path, token=token)
        assert (reply.status, reply.body) == (401, b""), (method, path, token)
    reply = web.request(method, path + "?token=wrong", token=None)
    assert (reply.status, reply.body) == (401, b"")
    cookie = {"Cookie": f"clan-vm-token-{web.port}=wrong"}
    assert web.request(method, path, token=None, headers=cookie).status == 401


def test_the_url_with_the_token_logs_in_with_a_strict_httponly_cookie(web: Served) -> None:
    opened = web.request("GET", "/?token=" + web.token, token=None)
    assert opened.status == 303 and opened.headers["location"] == "/"  # the token leaves the URL
    cookie = opened.headers["set-cookie"]
    name_value, *flags = [part.strip() for part in cookie.split(";")]
    assert name_value == f"clan-vm-token-{web.port}={web.token}"
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(flags)
    page = web.request("GET", "/", token=None, headers={"Cookie": name_value})
    assert page.status == 200 and b"<title>clan VMs</title>" in page.body
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self'
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    listed = web.request("GET", "/api/vms", token=None, headers={"Cookie": name_value})
    assert listed.status == 200 and listed.json() == []
    bearer = web.request("GET", "/api/vms")
    assert bearer.status == 200


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.2", "localhost.evil.example", ""])
def test_a_foreign_host_header_is_refused_even_with_the_token(web: Served, host: str) -> None:
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1."""
    for method, path in [("GET", "/"), ("GET", "/api/vms"), ("POST", "/api/vms/web/start")]:
        reply = web.request(method, path, headers={"Host": f"{host}:{web.port}"})
        assert reply.status == 403, (host, path)
        assert b"web" not in reply.body


def test_localhost_and_the_listen_address_are_this_server(web: Served) -> None:
    for host in (f"localhost:{web.port}", f"127.0.0.1:{web.port}"):
        assert web.request("GET", "/api/vms", headers={"Host": host}).status == 200


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1"]
)
def test_a_state_changing_request_from_another_origin_is_refused(web: Served, origin: str) -> None:
    """CSRF: a foreign page posting to the dashboard (with the user's cookie)."""
    for method, path in [
        ("POST", "/api/vms/web/start"),
        ("POST", "/api/vms/web/stop"),
        ("DELETE", "/api/vms/web"),
        ("POST", "/api/vms/web/snapshots"),
    ]:
        reply = web.request(method, path, {}, headers={"Origin": origin})
        assert reply.status == 403, (origin, path)
    # Reading is not a change (and the browser keeps the answer from the foreign page).
    assert web.request("GET", "/api/vms", headers={"Origin": origin}).status == 200


def test_the_own_origin_may_change_things(web: Served) -> None:
    reply = web.request("POST", "/api/vms/web/start", {}, headers={"Origin": web.origin})
    assert reply.status == 404  # past the guard: there is no VM 'web'
    assert reply.json() == {"error": "no VM named 'web' (see: clan-vm-manager list)"}


def test_websockets_need_the_token_and_this_origin(web: Served) -> None:
    with pytest.raises(InvalidStatus) as refused:
        web.websocket("/api/vms/web/console", token=False)
    assert refused.value.response.status_code == 401
    for origin in ("http://evil.example", "null", "http://localhost:1"):
        with pytest.raises(InvalidStatus) as refused:
            web.websocket("/api/vms/web/console", origin=origin)
        assert refused.value.response.status_code == 403, origin
    with web.websocket("/api/vms/web/console", origin=web.origin) as ws:
        note = json.loads(ws.recv(timeout=30))
    assert note == {"error": "no VM named 'web' (see: clan-vm-manager list)", "status": 404}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/vms/..%2F..%2Fetc", 404),
        ("/api/vms/web/history/..%2F..%2F..%2Fetc%2Fpasswd", 404),
        ("/api/vms/a_b.c", 400),
        ("/api/vms/-web", 400),
        ("/api/vms/" + "a" * 65, 400),
        ("/api/vms/nope", 404),
        ("/api/vms/nope/history", 404),
        ("/api/vms?filter=sleepy", 400),
        ("/api/vms/nope/history?limit=x", 400),
        ("/static/../../../../etc/passwd", 404),
        ("/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", 404),
    ],
)
def test_names_and_paths_are_checked(web: Served, path: str, status: int) -> None:
    reply = web.request("GET", path)
    assert reply.status == status, reply.body
    assert b"root:" not in reply.body
    if path.startswith("/api/"):
        assert set(reply.json()) == {"error"}


def test_bad_request_bodies_are_400(web: Served) -> None:
    for body in (b"{", b"[1]", json.dumps({"force": "yes"}).encode()):
        reply = web.request("POST", "/api/vms/web/stop", body)
        assert reply.status == 400, body
        assert "error" in reply.json()


def test_a_reachable_address_needs_allow_remote(cli: CLI, tmp_path: Path) -> None:
    refused = cli.run("serve", "--listen", "0.0.0.0:0", cwd=tmp_path)
    assert refused.code == 2
    assert refused.err.startswith("error: --listen 0.0.0.0:0 is reachable from other machines")
    assert "anyone who can reach it with the token controls the VMs" in refused.err
    process = subprocess.Popen(
        [*cli.command(), "serve", "--listen", "0.0.0.0:0", "--allow-remote"],
        stdout=subprocess.PIPE,
        text=True,
        env=cli.env,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    warning = process.stdout.readline()
    assert "anyone who can reach it with the token controls the VMs" in warning
    assert "open http://" in process.stdout.readline()
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0


def test_without_xterm_serve_says_how_to_get_it(cli: CLI, tmp_path: Path) -> None:
    cli.env["CLAN_VM_XTERM_DIR"] = str(tmp_path / "none")
    result = cli.run("serve", "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert result.code == 1
    assert "xterm.js) is missing" in result.err and "./scripts/setup" in result.err
    assert result.err.count("\n") == 1


def test_ctrl_c_ends_it_cleanly_while_pages_listen(cli: CLI, tmp_path: Path) -> None:
    served = serve(cli, cwd=tmp_path)
    stream = served.events()
    first = next(iter(stream))
    assert first == ("vms", [])
    ws = served.websocket("/api/vms/nope/console")  # a websocket, too
    ended = threading.Event()
    threading.Thread(target=lambda: (list(stream), ended.set()), daemon=True).start()
    code, out, err = served.stop(signal.SIGINT, timeout=15)
    assert code == 0, err
    assert out.rstrip().endswith("stopped serving")
    assert "Traceback" not in err
    assert ended.wait(5)  # the live stream was ended, not cut off
    with ws:
        pass
