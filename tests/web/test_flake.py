"""The dashboard inside a flake: the VMs it declares but that do not exist yet, as
``list --flake`` shows them, and starting one creates it from the flake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import READY, kill_leftover_qemu
from tests.nix_fixtures import NixCLI, ncli, needs_nix, test_flake
from tests.web.served import serve

__all__ = ["ncli", "test_flake"]
pytestmark = [needs_nix, pytest.mark.vm]


def test_declared_vms_are_listed_and_started_from_the_flake(ncli: NixCLI, test_flake: Path) -> None:
    flake = str(test_flake)
    served = serve(ncli, cwd=test_flake)  # started inside the flake: it shows what it declares
    try:
        assert "showing the VMs the flake" in "".join(served.lines)
        listed = served.ok("GET", "/api/vms")
        assert listed == json.loads(ncli.ok("list", "--flake", flake, "--json").out)
        assert {v["name"]: (v["state"], v["declared"]) for v in listed} == {
            "alpha": ("not-created", True),
            "beta": ("not-created", True),
        }
        declared = json.loads(ncli.ok("show", "alpha", "--flake", flake, "--json").out)
        assert served.ok("GET", "/api/vms/alpha") == declared
        assert served.request("GET", "/api/vms/gamma").status == 404

        started = served.ok("POST", "/api/vms/alpha/start", {"wait_for": READY})
        assert started["message"].startswith("started VM 'alpha' (pid ")
        row = {v["name"]: v for v in served.ok("GET", "/api/vms")}["alpha"]
        assert (row["state"], row["declared"], row["eval_error"]) == ("running", True, None)
        shown = served.ok("GET", "/api/vms/alpha")
        assert shown["declared"] == declared and shown["state"] == "running"
        code, out, _ = served.stop()
        assert code == 0 and out.rstrip().endswith("stopped serving")
        # No VM depends on the server.
        assert json.loads(ncli.ok("status", "alpha", "--json").out)["state"] == "running"
        assert "(acpi)" in ncli.ok("stop", "alpha").out
    finally:
        served.stop()
        kill_leftover_qemu(ncli.state_dir)
