"""The VM definition schema: what it accepts from Nix JSON and CLI flags, and what it refuses."""

from __future__ import annotations

import dataclasses
import json
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest
from pydantic import BaseModel

from clan_vm_tasks import models, schema
from clan_vm_tasks.backends.qemu.host_network import _previous_port
from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.models import PortForward, VMConfig, recorded_forward, recorded_to
from clan_vm_tasks.names import check_name, mac_for
from clan_vm_tasks.schema import parse_forward, validate


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
    assert validate(VMConfig, nix, "VM") == validate(VMConfig, python, "VM")


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
    assert parse_forward("2222:22") == PortForward(protocol="tcp", host_port=2222, guest_port=22)
    assert parse_forward("udp:5353:53").protocol == "udp"
    assert parse_forward("tcp:auto:80").host_port == "auto"
    assert str(parse_forward("auto:80")) == "tcp:127.0.0.1:auto->80"
    for bad in ("ssh", "tcp:22", "icmp:1:2", "tcp:0:22", "tcp:1:99999"):
        with pytest.raises(InvalidInput):
            parse_forward(bad)


def test_a_recorded_forward_reads_back_as_it_was_written() -> None:
    """VMState.forwards holds each forward as started (``str`` of it, with the host port
    chosen; a libvirt host's own address there): one parser reads them for ssh, the port
    a forward held before, a port another VM holds, and libvirt's forwards added again."""
    for forward in (
        PortForward(protocol="tcp", host_port=2222, guest_port=22),
        PortForward(protocol="udp", host_port=5353, guest_port=53),
        PortForward(protocol="tcp", host_port=8080, guest_port=80, guest_address="10.0.2.15"),
        PortForward(protocol="tcp", host_port=8081, guest_port=80, guest_address="fd00::5"),
    ):
        assert recorded_forward(str(forward)) == ("127.0.0.1", forward)
    there = PortForward(protocol="tcp", host_port=40022, guest_port=22)
    assert recorded_forward("tcp:192.0.2.7:40022->22") == ("192.0.2.7", there)
    for junk in (
        "",
        "tcp:127.0.0.1:auto->22",
        "icmp:127.0.0.1:1->2",
        "tcp:127.0.0.1:0->22",
        "tcp:127.0.0.1:2222->99999",
        "tcp:2222->22",
        "tcp:127.0.0.1:2222->22 ",
    ):
        assert recorded_forward(junk) is None, junk  # fmt: skip


def test_the_recorded_forward_to_a_guest_port_is_found_by_protocol_port_and_address() -> None:
    recorded = [
        "junk",
        "udp:127.0.0.1:5022->22",
        "tcp:127.0.0.1:8022->10.0.2.15:22",
        "tcp:127.0.0.1:2222->22",
        "tcp:127.0.0.1:3333->22",
    ]
    ssh = PortForward(protocol="tcp", host_port=2222, guest_port=22)
    assert recorded_to(recorded, "tcp", 22) == ("127.0.0.1", ssh)  # the first one
    at = PortForward(protocol="tcp", host_port=8022, guest_port=22, guest_address="10.0.2.15")
    assert recorded_to(recorded, "tcp", 22, "10.0.2.15") == ("127.0.0.1", at)
    assert recorded_to(recorded, "udp", 22) is not None
    assert recorded_to(recorded, "tcp", 80) is None
    assert recorded_to(recorded, "udp", 22, "10.0.2.15") is None


def test_an_auto_forward_asks_first_for_the_port_it_had() -> None:
    previous = ["tcp:127.0.0.1:40100->22", "tcp:127.0.0.1:40101->10.0.2.15:80",
                "udp:127.0.0.1:40102->53", "garbage"]  # fmt: skip

    def auto(guest_port: int, protocol: str = "tcp", address: str | None = None) -> PortForward:
        return PortForward(
            protocol=protocol, host_port="auto", guest_port=guest_port, guest_address=address
        )

    assert _previous_port(previous, auto(22)) == 40100
    assert _previous_port(previous, auto(80, address="10.0.2.15")) == 40101
    assert _previous_port(previous, auto(80)) == 0  # another forward's port is not taken
    assert _previous_port(previous, auto(53, "udp")) == 40102


def test_mac_is_stable_locally_administered_and_distinct() -> None:
    mac = mac_for("web")
    assert mac == mac_for("web")
    first = int(mac.split(":")[0], 16)
    assert first & 0b10 and not first & 0b01  # locally administered, unicast
    assert len({mac_for(f"vm{i}") for i in range(1000)}) == 1000


# The schema (pydantic, what validates a definition before it is written) and the classes
# the operations hold (``models``, what a start loads without pydantic) are two
# descriptions of one definition: these tests hold them together.


def _bare(kind: Any) -> Any:
    """KIND without its constraints, the schema's classes as the classes of ``models``."""
    if get_origin(kind) is Annotated:
        return _bare(get_args(kind)[0])
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return {schema_class: model for model, schema_class in schema.SCHEMAS.items()}[kind]
    if get_origin(kind) in (Union, types.UnionType):
        return frozenset(_bare(arm) for arm in get_args(kind))
    if get_origin(kind) is Literal:
        return ("literal", frozenset(get_args(kind)))
    if get_origin(kind) in (list, dict):
        return (get_origin(kind), tuple(_bare(arg) for arg in get_args(kind)))
    return kind


@pytest.mark.parametrize("model", list(schema.SCHEMAS), ids=lambda m: m.__name__)
def test_the_schema_and_the_models_have_the_same_fields(model: type) -> None:
    validated = schema.SCHEMAS[model].model_fields
    held = {f.name: f for f in dataclasses.fields(model)}
    assert list(validated) == list(held)  # the same names, in the order they are written
    hints = get_type_hints(model, include_extras=True)
    for name, spec in held.items():
        info = validated[name]
        assert _bare(info.annotation) == _bare(hints[name]), name
        if spec.default is not dataclasses.MISSING:
            assert info.get_default(call_default_factory=True) == spec.default, name
        elif spec.default_factory is not dataclasses.MISSING:
            assert _as_model(info.get_default(call_default_factory=True)) == spec.default_factory()
        else:
            assert info.is_required(), name


def _as_model(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return schema.converted(_bare(type(value)), value)
    return value


DEFINITIONS = [
    {"name": "plain"},
    {
        "name": "full",
        "cpus": 3,
        "memory": 512,
        "diskSize": 2048,
        "kernel": "/boot/vmlinuz",
        "initrd": "/boot/initrd",
        "append": "console=ttyS0",
        "machine": "pc",
        "accel": "tcg",
        "network": {
            "mode": "nat",
            "mac": "02:AB:cd:ef:01:23",
            "restrict": True,
            "forwardPorts": [
                {"hostPort": 2222, "guestPort": 22},
                {
                    "protocol": "udp",
                    "hostPort": "auto",
                    "guestPort": 53,
                    "guestAddress": "10.0.2.9",
                },
            ],
        },
        "qemuArgs": ["-device", "virtio-rng-pci"],
        "bootTest": {"expect": "ready", "timeout": 30, "checks": ["true"]},
        "agent": False,
        "sshUser": "admin",
        "sshd": True,
        "host": "qemu:///system",
        "nixosConfiguration": "web",
        "rootFilesystem": {"label": "root"},
        "graphics": True,
        "shares": {
            "data": {"source": "/srv/data", "target": "/data", "readOnly": False},
            "fs": {"type": "virtiofs", "identity": "12:34"},
        },
        "extraDisks": {"empty2": {"size": 64}, "empty10": {"size": 1}},
    },
]


@pytest.mark.parametrize("data", DEFINITIONS, ids=lambda d: d["name"])
def test_what_is_written_loads_back_as_the_schema_validated_it(data: dict[str, Any]) -> None:
    validated = schema.VMConfig.model_validate(data)
    config = validate(VMConfig, data, "VM")
    # The state directory holds what it always held (pydantic's JSON), and a start reads it
    # back, without pydantic, as the definition the schema validated.
    assert models.dump(config) == json.loads(validated.model_dump_json())
    assert models.load(VMConfig, json.loads(json.dumps(models.dump(config)))) == config
    assert config.network.mac in (None, "02:ab:cd:ef:01:23")  # the schema's normal form
    if data["name"] == "full":
        assert config.shares["data"].source == Path("/srv/data")
        assert config.network.forward_ports[1].host_port == "auto"


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"cpus": "2"}, "cpus"),
        ({"cpus": True}, "cpus"),
        ({"agent": 1}, "agent"),
        ({"colour": "red"}, "colour"),
        ({"network": {"mode": "wifi"}}, "network.mode"),
        ({"network": {"forward_ports": [{"host_port": 1}]}}, "network.forward_ports.0.guest_port"),
        ({"shares": {"data": {"source": 7}}}, "shares.data.source"),
        ({"extra_disks": {"x": {"size": None}}}, "extra_disks.x.size"),
        ({"qemu_args": "-s"}, "qemu_args"),
    ],
)
def test_a_stored_definition_of_the_wrong_shape_is_refused_where_it_is_wrong(
    change: dict[str, Any], where: str
) -> None:
    """What the schema writes has exact JSON types: a load takes nothing else (the schema
    itself takes "2" for 2 from a flake)."""
    data = {**models.dump(VMConfig(name="web")), **change}
    with pytest.raises(models.Malformed, match=rf"^{re.escape(where)}: "):
        models.load(VMConfig, data)


def test_a_definition_made_in_python_is_validated_before_it_is_written(tmp_path: Path) -> None:
    from clan_vm_tasks import lifecycle

    store = lifecycle.open_store(lifecycle.Settings(state_dir=tmp_path / "state"))
    bad = VMConfig(name="web", cpus=0, network=models.NetworkConfig(mac="01:00:00:00:00:01"))
    with pytest.raises(InvalidInput, match=r"cpus: .*; network\.mac: .*multicast"):
        lifecycle.create(store, bad)
    assert store.names() == []


def test_a_wrong_value_is_named_on_one_short_line() -> None:
    with pytest.raises(models.Malformed) as caught:
        models.load(VMConfig, {"name": "web", "qemu_args": "-s\n" * 10_000})
    message = str(caught.value)
    assert message.startswith("qemu_args: '-s\\n-s\\n") and message.endswith("is not a list")
    assert len(message) < 120 and "\n" not in message
