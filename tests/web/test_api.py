"""The JSON API on real VMs: the same JSON, messages and refusals as the command line, the
live stream, and the console over a websocket (one client at a time, as the CLI's)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection

from examples.guest import POWER_BUTTON_LINE
from tests.conftest import CLI, READY, Guest, kill_leftover_qemu
from tests.vmhelpers import console_log
from tests.web.served import EventStream, Served, serve

pytestmark = [pytest.mark.vm, pytest.mark.xdist_group("web-api")]


class Env:
    def __init__(self, cli: CLI, web: Served) -> None:
        self.cli = cli
        self.web = web

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli.ok(*args, "--json").out)

    def cli_error(self, *args: str) -> str:
        result = self.cli.run(*args)
        assert result.code != 0, result.out
        assert result.err.startswith("error: "), result.err
        return result.err.removeprefix("error: ").strip()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, guest: Guest) -> Iterator[Env]:
    home = tmp_path_factory.mktemp("web-api")
    cli = CLI(home / "state")
    cli.create_guest("alpha", guest)
    cli.create_guest("beta", guest, "--forward", "tcp:auto:22")
    web = serve(cli, cwd=home)
    yield Env(cli, web)
    code, _, err = web.stop()
    kill_leftover_qemu(cli.state_dir)
    assert code == 0, err


def test_reads_are_the_command_lines_json(env: Env) -> None:
    web = env.web
    assert web.ok("GET", "/api/vms") == env.cli_json("list")
    assert web.ok("GET", "/api/vms?filter=stopped") == env.cli_json("list", "--filter", "stopped")
    assert web.ok("GET", "/api/vms/beta") == env.cli_json("show", "beta")
    assert web.ok("GET", "/api/vms/beta/history") == env.cli_json("history", "--vm", "beta")
    assert web.ok("GET", "/api/vms/beta/snapshots") == env.cli_json("snapshots", "beta") == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/vms/nope", None),
        ("GET", "/api/vms/nope/history", None),
        ("GET", "/api/vms/nope/snapshots", None),
        ("POST", "/api/vms/nope/start", {}),
        ("POST", "/api/vms/nope/stop", {"force": True}),
        ("POST", "/api/vms/nope/restart", {}),
        ("POST", "/api/vms/nope/pause", {}),
        ("POST", "/api/vms/nope/resume", {}),
        ("POST", "/api/vms/nope/snapshots", {"name": "s1"}),
        ("POST", "/api/vms/nope/snapshots/s1/revert", {}),
        ("DELETE", "/api/vms/nope/snapshots/s1", None),
        ("DELETE", "/api/vms/nope", None),
    ],
)
def test_an_unknown_vm_is_404_with_the_command_lines_message(
    env: Env, method: str, path: str, body: Any
) -> None:
    reply = env.web.request(method, path, body)
    assert reply.status == 404
    assert reply.json() == {"error": env.cli_error("status", "nope")}


def test_wrong_requests_are_400_with_the_command_lines_message(env: Env) -> None:
    web = env.web
    reply = web.request("POST", "/api/vms/beta/snapshots", {"name": "12"})
    assert reply.status == 400
    assert reply.json()["error"] == env.cli_error("snapshot", "beta", "12")
    reply = web.request("POST", "/api/vms/beta/snapshots/nosuch/revert", {})
    assert reply.status == 400
    assert reply.json()["error"] == env.cli_error("revert", "beta", "nosuch")
    for body in ({"timeout": 0}, {"timeout": "soon"}, {"force": 1}):
        assert web.request("POST", "/api/vms/beta/stop", body).status == 400
    assert web.request("POST", "/api/vms/beta/snapshots", {}).status == 400
    assert web.request("POST", "/api/vms/beta/frobnicate", {}).status == 404


@pytest.mark.parametrize("action", ["stop", "pause", "resume"])
def test_what_makes_no_sense_when_stopped_is_409(env: Env, action: str) -> None:
    reply = env.web.request("POST", f"/api/vms/beta/{action}", {})
    assert reply.status == 409
    assert reply.json() == {"error": env.cli_error(action, "beta")}


def test_a_stopped_vms_console_is_409(env: Env) -> None:
    with env.web.websocket("/api/vms/beta/console") as ws:
        note = json.loads(ws.recv(timeout=30))
    assert note == {"error": env.cli_error("console", "beta"), "status": 409}


def _running_in(event: str, data: Any, name: str) -> bool:
    rows = data if event == "vms" else data.get("changed", []) if event == "changes" else []
    return any(row["name"] == name and row["state"] == "running" for row in rows)


def test_start_is_pushed_live_and_a_second_start_is_409(env: Env) -> None:
    web = env.web
    stream = web.events()
    first = next(iter(stream))
    assert first == ("vms", env.cli_json("list"))
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(
            reply=web.request("POST", "/api/vms/alpha/start", {"wait_for": READY})
        )
    )
    thread.start()
    seen = stream.until(lambda event, data: _running_in(event, data, "alpha"))
    thread.join(180)
    reply = result["reply"]
    assert reply.status == 200, reply.body
    pid = env.cli_json("status", "alpha")["pid"]
    assert reply.json()["message"].startswith(f"started VM 'alpha' (pid {pid}, ")
    assert f"{READY!r} appeared after" in reply.json()["message"]
    actions = [data for event, data in seen if event == "action"]
    assert actions[0]["vm"] == "alpha" and actions[0]["state"] == "running"
    progress = [a["progress"] for a in actions if a["progress"]]
    assert progress and progress[0] == "starting alpha"
    # The change came as a change, not as the whole list again.
    assert [event for event, _ in seen].count("vms") == 0
    done = stream.until(lambda event, data: event == "action" and data["state"] != "running")
    assert done[-1][1]["state"] == "ok" and done[-1][1]["message"] == reply.json()["message"]
    stream.close()

    again = web.request("POST", "/api/vms/alpha/start", {})
    assert again.status == 409
    assert again.json() == {"error": env.cli_error("start", "alpha")}
    assert web.ok("GET", "/api/vms/alpha")["state"] == "running"


def _read_until(ws: ClientConnection, text: bytes, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    seen = b""
    while text not in seen:
        message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(message, bytes):
            seen += message
    return seen


def test_the_console_over_a_websocket_one_client_at_a_time(env: Env) -> None:
    web = env.web
    with web.websocket("/api/vms/alpha/console") as ws:
        assert json.loads(ws.recv(timeout=30)) == {"attached": "alpha"}
        with web.websocket("/api/vms/alpha/console") as second:
            note = json.loads(second.recv(timeout=30))
        assert note["status"] == 409
        assert note["error"] == "the console of VM 'alpha' is already attached elsewhere"
        assert env.cli_error("console", "alpha") == note["error"]  # the CLI's rule, shared
        ws.send(b"echo web-$((6*7))-answer\n")
        assert b"web-42-answer" in _read_until(ws, b"web-42-answer")
    # Detached: the console is free again, for the command line too.
    answered = env.cli.ok("console", "alpha", stdin="echo cli-$((5*5))\n").out
    assert "cli-25" in answered


def test_pause_resume_and_live_snapshots(env: Env) -> None:
    web = env.web
    assert web.ok("POST", "/api/vms/alpha/pause") == {"message": "paused VM 'alpha'"}
    assert env.cli_json("status", "alpha")["state"] == "paused"
    assert web.request("POST", "/api/vms/alpha/pause", {}).json() == {
        "error": env.cli_error("pause", "alpha")
    }
    assert web.ok("POST", "/api/vms/alpha/resume") == {"message": "resumed VM 'alpha'"}
    assert env.cli_json("status", "alpha")["state"] == "running"

    taken = web.ok("POST", "/api/vms/alpha/snapshots", {"name": "s1"})
    assert taken["message"] == "took snapshot 's1' of VM 'alpha' with memory state"
    assert web.ok("GET", "/api/vms/alpha/snapshots") == env.cli_json("snapshots", "alpha")
    assert [s["name"] for s in env.cli_json("snapshots", "alpha")] == ["s1"]
    twice = web.request("POST", "/api/vms/alpha/snapshots", {"name": "s1"})
    assert twice.status == 409
    assert twice.json()["error"] == env.cli_error("snapshot", "alpha", "s1")

    reverted = web.ok("POST", "/api/vms/alpha/snapshots/s1/revert")
    assert reverted["message"] == (
        "reverted VM 'alpha' to snapshot 's1' (memory and disk); it is running"
    )
    gone = web.ok("DELETE", "/api/vms/alpha/snapshots/s1")
    assert gone == {"message": "deleted snapshot 's1' of VM 'alpha'"}
    assert env.cli_json("snapshots", "alpha") == []
    actions = [e["action"] for e in env.cli_json("history", "--vm", "alpha")]
    assert actions[:6] == ["snapshot-delete", "revert", "snapshot", "resume", "pause", "start"]


def test_restart_then_force_stop_says_its_step(env: Env) -> None:
    web = env.web
    restarted = web.ok("POST", "/api/vms/alpha/restart", {"wait_for": READY})
    pid = env.cli_json("status", "alpha")["pid"]
    assert restarted["message"] == f"restarted VM 'alpha' (pid {pid}, tcg)"
    stopped = web.ok("POST", "/api/vms/alpha/stop", {"force": True})
    assert stopped["step"] == "sigterm"
    assert stopped["message"].startswith("stopped VM 'alpha' after ")
    assert stopped["message"].endswith(": QEMU ended on SIGTERM (sigterm)")
    assert POWER_BUTTON_LINE not in console_log(env.cli, "alpha")  # the guest was skipped
    row = web.ok("GET", "/api/vms/alpha")
    assert (row["state"], row["last_stop"]) == ("stopped", "sigterm")
    assert web.request("POST", "/api/vms/alpha/stop", {}).status == 409


def test_delete_keeps_the_disk_unless_asked(env: Env) -> None:
    web = env.web
    deleted = web.ok("DELETE", "/api/vms/beta")
    kept = Path(deleted["kept_disk"])
    assert deleted["message"] == f"deleted VM 'beta'; its disk image is kept at {kept}"
    assert kept.is_file() and kept.parent == env.cli.state_dir / "kept-disks"
    assert web.request("GET", "/api/vms/beta").status == 404
    history = web.ok("GET", "/api/vms/beta/history")  # what happened to it stays readable
    assert history[0]["action"] == "delete" and history == env.cli_json("history", "--vm", "beta")
    removed = web.request("DELETE", "/api/vms/alpha", {"force": True})
    assert removed.json() == {"message": "deleted VM 'alpha'", "kept_disk": None}
    assert list((env.cli.state_dir / "kept-disks").iterdir()) == [kept]
    assert env.cli_json("list") == web.ok("GET", "/api/vms") == []


def test_events_after_the_vms_are_gone(env: Env) -> None:
    stream: EventStream = env.web.events()
    assert next(iter(stream)) == ("vms", [])
    stream.close()
