"""The VM definition schema: what it accepts from Nix JSON and CLI flags, and what it refuses."""

from __future__ import annotations

import pytest

from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.models import PortForward, VMConfig, validate
from clan_vm_tasks.names import check_name, mac_for


def test_nix_camel_case_and_python_snake_case_are_the_same_definition() -> None:
    nix = {
        "name": "web",
        "diskSize": 1024,
        "qemuArgs": ["-s"],
        "network": {"mode": "user", "forwardPorts": [{"hostPort": 2222, "guestPort": 22}]},
    }
    python = {
        "name": "web",
        "disk_size": 1024,
        "qemu_args": ["-s"],
        "network": {"mode": "user", "forward_ports": [{"host_port": 2222, "guest_port": 22}]},
    }
    assert VMConfig.model_validate(nix) == VMConfig.model_validate(python)


def test_defaults_follow_the_specification() -> None:
    config = VMConfig(name="web")
    assert (config.cpus, config.memory, config.disk_size) == (2, 2048, 20480)
    assert config.network.mode == "user" and config.accel == "auto" and config.machine == "q35"


def test_errors_name_every_bad_field_on_one_line() -> None:
    with pytest.raises(InvalidInput) as caught:
        validate(
            VMConfig, {"name": "web", "cpus": 0, "memory": "lots", "colour": "red"}, "VM definition"
        )
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("invalid VM definition: ")
    for field in ("cpus", "memory", "colour"):
        assert field in message


@pytest.mark.parametrize("name", ["web", "web-01", "a", "A_b-9", "x" * 64])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "../x", "a/b", "a b", ".x", "x" * 65, "é", "a.b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_name(name)


def test_port_forward_spec() -> None:
    assert PortForward.parse("2222:22") == PortForward(
        protocol="tcp", host_port=2222, guest_port=22
    )
    assert PortForward.parse("udp:5353:53").protocol == "udp"
    assert PortForward.parse("tcp:auto:80").host_port == "auto"
    assert str(PortForward.parse("auto:80")) == "tcp:127.0.0.1:auto->80"
    for bad in ("ssh", "tcp:22", "icmp:1:2", "tcp:0:22", "tcp:1:99999"):
        with pytest.raises(InvalidInput):
            PortForward.parse(bad)


def test_mac_is_stable_locally_administered_and_distinct() -> None:
    mac = mac_for("web")
    assert mac == mac_for("web")
    first = int(mac.split(":")[0], 16)
    assert first & 0b10 and not first & 0b01  # locally administered, unicast
    assert len({mac_for(f"vm{i}") for i in range(1000)}) == 1000
