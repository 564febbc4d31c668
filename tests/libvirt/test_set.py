"""``set`` of a VM on a libvirt host: its disk volume grows there, the domain is defined from
the changed definition at the next start, a change made while it runs waits for that."""

from __future__ import annotations

import pytest

from tests.conftest import READY, Guest
from tests.libvirt.conftest import LV, shell

pytestmark = pytest.mark.vm


def test_set_of_a_vm_on_a_libvirt_host(lv: LV, guest: Guest) -> None:
    lv.host("a")
    cli, name = lv.cli, lv.name("set")
    lv.create(name, "a", guest)
    changed = cli.ok("set", name, "--cpus", "2", "--disk", "96", "--forward", "tcp:auto:22")
    assert changed.out.startswith(f"changed VM '{name}' on a: cpus 1 -> 2")
    # The volume on the host grew at once, as libvirt says.
    vol = lv.conn("a").storagePoolLookupByName("default").storageVolLookupByName(f"{name}.qcow2")
    assert vol.info()[1] == 96 << 20

    cli.ok("start", name, "--wait-for", READY, "--timeout", "120")
    seen = shell(lv, name, "echo SEEN-$(grep -c ^processor /proc/cpuinfo)-cpus", "-cpus")
    assert "SEEN-2-cpus" in seen
    assert "clan-guest: disk vda 96 MiB" in cli.ok("console", name, "--log").out
    [forward] = lv.status(name)["forwards"]
    assert forward.endswith("->22")

    # While it runs: the change waits, the domain keeps what it has.
    waiting = cli.ok("set", name, "--memory", "256", "--no-forward", "all")
    assert f"VM '{name}' on a is running; at its next start: memory 192 -> 256 MiB" in waiting.out
    assert lv.status(name)["pending"]["changes"]["memory"] == {"from": 192, "to": 256}
    assert lv.conn("a").lookupByName(name).maxMemory() == 192 << 10
    cli.ok("restart", name, "--wait-for", READY)
    info = lv.status(name)
    assert (info["memory"], info["forwards"], info["pending"]) == (256, [], None)
    assert lv.conn("a").lookupByName(name).maxMemory() == 256 << 10
    cli.ok("stop", name, "--force")
    cli.ok("delete", name, "--force")
