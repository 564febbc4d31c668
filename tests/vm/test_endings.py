"""How a VM ended, told truthfully: a panic is a crash, a reboot under -no-reboot is not a
power-off, a QEMU ended from outside is not a power-off, a record that lost a running VM
takes it back, and a VM whose definition is unusable is listed as broken."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import CLI, READY, Guest
from tests.vmhelpers import guest_run, history_actions, status


def history(cli: CLI, name: str) -> list[dict[str, str]]:
    events: list[dict[str, str]] = json.loads(cli.ok("history", "--vm", name, "--json").out)
    return events


def wait_state(cli: CLI, name: str, wanted: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while (info := status(cli, name))["state"] != wanted:
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    return info


@pytest.mark.vm
def test_a_kernel_panic_under_no_reboot_is_a_crash_and_a_failed_boot(
    cli: CLI, guest: Guest
) -> None:
    # No init to run: the kernel panics, reboots after 1 s, and -no-reboot makes QEMU exit.
    cli.create_guest(
        "panicky",
        guest,
        "--qemu-arg=-no-reboot",
        append="console=ttyS0 no_timer_check panic=1 rdinit=/nonexistent root=/dev/nonexistent",
    )
    result = cli.run("start", "panicky", "--wait-for", READY, "--timeout", "120")
    assert result.code == 1
    assert "the guest kernel panicked" in result.err, result.err
    assert "powered itself off" not in result.err
    info = status(cli, "panicky")
    assert info["state"] == "crashed" and info["pid"] is None
    events = history(cli, "panicky")
    assert [e["action"] for e in events[:2]] == ["start", "crash"]
    assert events[0]["result"] == "failed" and "panicked" in events[1]["details"]
    cli.ok("start", "panicky")  # a crashed VM can be started again
    wait_state(cli, "panicky", "crashed")


@pytest.mark.vm
def test_a_boot_that_failed_the_timer_check_says_what_avoids_it(cli: CLI, guest: Guest) -> None:
    # The kernel's own words, printed by an init that then exits: the kernel panics as it
    # does when its IO-APIC timer check fails under a starved TCG.
    cli.create_guest(
        "timerless",
        guest,
        "--qemu-arg=-no-reboot",
        append='console=ttyS0 panic=1 rdinit=/bin/sh -- -c "echo IO-APIC + timer doesn\'t work"',
    )
    result = cli.run("start", "timerless", "--wait-for", READY, "--timeout", "120")
    assert result.code == 1
    error = result.err.splitlines()[-1]
    assert error.startswith("error: ") and "the guest kernel panicked" in error, result.err
    assert "add no_timer_check to the kernel command line" in error, result.err


@pytest.mark.vm
def test_a_guest_reboot_under_no_reboot_is_reported_as_such(cli: CLI, guest: Guest) -> None:
    cli.boot("rebooter", guest, "--qemu-arg=-no-reboot")
    guest_run(cli, "rebooter", "echo going-down; reboot -f", "going-down")
    info = wait_state(cli, "rebooter", "stopped")
    assert info["last_stop"] == "guest-reboot"
    event = history(cli, "rebooter")[0]
    assert event["action"] == "poweroff" and "rebooted" in event["details"]


@pytest.mark.vm
def test_qemu_ended_from_outside_is_a_crash_not_a_power_off(cli: CLI, guest: Guest) -> None:
    cli.boot("outside", guest)
    os.kill(int(status(cli, "outside")["pid"]), signal.SIGTERM)
    wait_state(cli, "outside", "crashed")
    event = history(cli, "outside")[0]
    assert event["action"] == "crash" and "signal from outside" in event["details"]


@pytest.mark.vm
@pytest.mark.parametrize("damage", ["deleted", "torn", "stopped"])
def test_a_running_vm_whose_record_was_lost_is_taken_back(
    cli: CLI, guest: Guest, damage: str
) -> None:
    cli.boot("amnesia", guest, "--forward", "tcp:auto:22")
    before = status(cli, "amnesia")
    record = cli.state_dir / "vms" / "amnesia" / "state.json"
    if damage == "deleted":
        record.unlink()
    elif damage == "torn":
        record.write_bytes(record.read_bytes()[:17])
    else:
        record.write_text(json.dumps({"status": "stopped"}))
    listed = {vm["name"]: vm for vm in json.loads(cli.ok("list", "--json").out)}
    assert listed["amnesia"]["state"] == "running"
    assert listed["amnesia"]["pid"] == before["pid"]
    assert listed["amnesia"]["forwards"] == before["forwards"]
    assert history_actions(cli, "amnesia")[0] == "recover"
    stopped = cli.ok("stop", "amnesia")
    assert "(acpi)" in stopped.out
    cmdline = Path(f"/proc/{before['pid']}/cmdline")
    assert not cmdline.exists() or not cmdline.read_bytes()  # gone, or a zombie


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (b"{not json", "unreadable"),
        (b"[]", "not a JSON object"),
        (json.dumps({"name": "sick", "cpus": "two"}).encode(), "invalid cpus"),
    ],
)
def test_a_vm_with_an_unusable_definition_is_listed_as_broken(
    cli: CLI, guest: Guest, damage: bytes, reason: str
) -> None:
    cli.create_guest("sick", guest)
    cli.create_guest("well", guest)
    (cli.state_dir / "vms" / "sick" / "config.json").write_bytes(damage)
    rows = {vm["name"]: vm for vm in json.loads(cli.ok("list", "--json").out)}
    assert rows["sick"]["state"] == "broken" and rows["sick"]["error"]
    assert rows["well"]["state"] == "stopped" and rows["well"]["error"] is None
    table = cli.ok("list").out
    assert "broken: its definition" in table and "None MiB" not in table
    assert "sick" in cli.ok("list", "--filter", "broken").out
    for verb in ("start", "status", "show"):
        result = cli.run(verb, "sick")
        assert result.code == 1, (verb, result)
        assert result.err.startswith("error: VM 'sick' is broken"), result.err
        assert "Traceback" not in result.err
    assert reason in cli.run("start", "sick").err or "broken" in cli.run("start", "sick").err
    cli.ok("delete", "sick")  # a broken VM can still be removed
    assert [vm["name"] for vm in json.loads(cli.ok("list", "--json").out)] == ["well"]
