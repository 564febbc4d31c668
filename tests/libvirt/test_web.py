"""The web dashboard with a VM on a libvirt host: listed as the command line lists it, its
console in the browser's websocket (libvirt's console stream, one client at a time), its
stop with the step and the host named."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import READY, Guest
from tests.libvirt.conftest import LV
from tests.web.served import serve

pytestmark = pytest.mark.vm


def test_a_libvirt_vm_on_the_dashboard(lv: LV, guest: Guest) -> None:
    lv.host("a")
    cli, name = lv.cli, lv.name("web")
    lv.create(name, "a", guest)
    cli.ok("start", name, "--wait-for", READY, "--timeout", "120")
    served = serve(cli, cwd=lv.settings.parent)
    try:
        assert served.ok("GET", "/api/vms") == json.loads(cli.ok("list", "--json").out)
        assert served.ok("GET", f"/api/vms/{name}")["uri"] == lv.named["a"].uri
        with served.websocket(f"/api/vms/{name}/console") as ws:
            assert json.loads(ws.recv(timeout=30)) == {"attached": name}
            with served.websocket(f"/api/vms/{name}/console") as second:
                assert json.loads(second.recv(timeout=30))["status"] == 409
            assert cli.run("console", name, stdin="echo nope\n").code == 1
            ws.send(b"echo libvirt-$((6*7))-web\n")
            seen, deadline = b"", time.monotonic() + 60
            while b"libvirt-42-web" not in seen:
                message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
                seen += message if isinstance(message, bytes) else b""
        stopped = served.ok("POST", f"/api/vms/{name}/stop")
        assert stopped["step"] == "acpi"
        assert stopped["message"].startswith(f"stopped VM '{name}' on a after ")
    finally:
        served.stop()
