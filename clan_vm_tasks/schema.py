"""The schema every VM definition is validated by before it is written, whether it comes
from Nix JSON, command-line flags or the Python API: pydantic models with the fields of
``models``, which is what they validate into (``validate``).

Field names are snake_case in Python and in the state directory; the camelCase
spelling used by Nix (``diskSize``, ``forwardPorts``) is accepted as an alias.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from clan_vm_tasks import models
from clan_vm_tasks.errors import InvalidInput
from clan_vm_tasks.models import ROOT_SERIAL, Accel, NetworkMode
from clan_vm_tasks.names import name_problem

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_DIGITS = re.compile(r"[0-9]{1,5}")  # ASCII only: str.isdigit() also takes "²" and "٢"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}")
T = TypeVar("T")


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class PortForward(_Model):
    """A host port on 127.0.0.1 forwarded to a guest port (user-mode networking).

    ``host_port`` "auto" is a free port chosen at each start (see ``hostnet``);
    ``guest_address`` None is the guest's own address (QEMU's default).
    """

    protocol: Literal["tcp", "udp"] = "tcp"
    host_port: Annotated[int, Field(ge=1, le=65535)] | Literal["auto"]
    guest_port: Annotated[int, Field(ge=1, le=65535)]
    guest_address: str | None = None

    @field_validator("guest_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not _IPV4.fullmatch(value):
            raise ValueError(f"{value!r} is not an IPv4 address")
        return value


class NetworkConfig(_Model):
    mode: NetworkMode = "user"
    bridge: str | None = None
    tap: str | None = None  # a tap device made by the user, for mode "tap"
    mac: str | None = None
    restrict: StrictBool = False  # user mode: the guest reaches neither host nor outside
    forward_ports: list[PortForward] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> NetworkConfig:
        if self.mode == "tap" and self.tap is None:
            raise ValueError("network mode tap needs a tap device (--tap IFNAME)")
        if self.tap is not None and self.mode != "tap":
            raise ValueError("a tap device (--tap) needs network mode tap")
        if self.bridge is not None and self.mode != "bridge":
            raise ValueError("a bridge (--bridge) needs network mode bridge")
        if self.forward_ports and self.mode not in ("user", "nat"):
            raise ValueError("port forwards need user-mode networking (--network user)")
        if self.restrict and self.mode not in ("user", "nat"):
            raise ValueError("restrict needs user-mode networking (--network user)")
        seen: set[tuple[str, int | str]] = set()
        for forward in self.forward_ports:
            key = (forward.protocol, forward.host_port)
            if forward.host_port != "auto" and key in seen:
                raise ValueError(
                    f"host port {forward.protocol}:{forward.host_port} is forwarded twice"
                )
            seen.add(key)
        return self

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        if value is None:
            return None
        mac = value.lower()
        if not _MAC.fullmatch(mac):
            raise ValueError(f"{value!r} is not a MAC address like 02:ab:cd:ef:01:23")
        if int(mac[:2], 16) & 1:
            raise ValueError(f"{value!r} is a multicast address")
        if mac == "00:00:00:00:00:00":
            raise ValueError(f"{value!r} is not a usable MAC address")
        return mac

    @field_validator("bridge", "tap")
    @classmethod
    def _ifname(cls, value: str | None) -> str | None:
        if value is not None and not _IFNAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a network interface name")
        return value


class BootTest(_Model):
    """What ``boot-test`` waits for: text on the serial console, within a time limit; then
    the commands it runs in the guest (through the guest agent), each of which must exit 0."""

    expect: str | None = None
    timeout: Annotated[int, Field(ge=1, le=86400, description="seconds")] = 120
    checks: list[str] = Field(default_factory=list)


_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}")  # a 9p mount tag (and a QEMU id)
_DISK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,19}")  # a virtio-blk serial: 20 bytes
_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,16}")  # an ext4 label: 16 bytes


class Share(_Model):
    """A host directory the guest sees over 9p or virtiofs, by mount tag (the key in
    ``shares``)."""

    source: Path | None = None  # None: a directory of the VM's own (vms/NAME/shares/TAG)
    target: str | None = None  # where the guest mounts it (the guest's business)
    read_only: StrictBool = True
    type: Literal["9p", "virtiofs"] = "9p"
    security_model: Literal["passthrough", "mapped-xattr", "mapped-file", "none"] = "mapped-xattr"
    # DEV:INO of the directory SOURCE led to when it was checked (and allowed): the launch
    # shares that directory or refuses. Set by the tool from a flake's definition, never
    # taken from one (nix.trust).
    identity: str | None = None

    @field_validator("identity")
    @classmethod
    def _identity(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9]+:[0-9]+|missing", value):
            raise ValueError(f"{value!r} is not DEV:INO")
        return value

    @field_validator("source")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"{str(value)!r} is not an absolute path")
        if value is not None and ".." in value.parts:  # /nix/store/../root is not the store
            raise ValueError(f"{str(value)!r} has a '..' component")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r} is not an absolute path")
        return value


class ExtraDisk(_Model):
    size: Annotated[int, Field(ge=1, le=64 * 1024 * 1024, description="MiB")]


class RootFilesystem(_Model):
    """A file system made on the root disk when the VM is created."""

    type: Literal["ext4"] = "ext4"
    label: str = "nixos"

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        if not _LABEL.fullmatch(value):
            raise ValueError(f"{value!r} is not a file system label (1-16 of A-Z a-z 0-9 _ . -)")
        return value


class VMConfig(_Model):
    """What a VM is: everything needed to launch it, nothing about whether it runs."""

    name: str
    cpus: Annotated[int, Field(ge=1, le=256)] = 2
    memory: Annotated[int, Field(ge=16, le=4 * 1024 * 1024, description="MiB")] = 2048
    disk_size: Annotated[int, Field(ge=1, le=64 * 1024 * 1024, description="MiB")] = 20480
    kernel: Path | None = None
    initrd: Path | None = None
    base_image: Path | None = None  # read-only backing file of a copy-on-write disk
    append: str | None = None
    machine: str = "q35"
    accel: Accel = "auto"
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    qemu_args: list[str] = Field(default_factory=list)
    boot_test: BootTest = Field(default_factory=BootTest)
    agent: StrictBool = True  # a virtio-serial channel for the QEMU guest agent
    ssh_user: str = "root"  # whose authorized_keys get the VM's key (``ssh``)
    sshd: StrictBool = False  # a NixOS guest runs sshd (its VM variant says so; recorded only)
    host: str | None = None  # a libvirt host (URI or a name from the settings); None: here
    nixos_configuration: str | None = None  # the NixOS configuration this VM is a variant of
    root_filesystem: RootFilesystem | None = None  # made on the disk at create
    graphics: StrictBool = False  # a display (virtio-vga over SPICE); else serial only
    shares: dict[str, Share] = Field(default_factory=dict)  # by mount tag
    extra_disks: dict[str, ExtraDisk] = Field(default_factory=dict)  # by name (serial)

    @field_validator("shares", "extra_disks")
    @classmethod
    def _keys(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        pattern, what = (_TAG, "mount tag") if info.field_name == "shares" else (_DISK_NAME, "disk")
        for key in value:
            if not pattern.fullmatch(key):
                raise ValueError(f"{key!r} is not a valid {what} name")
            if info.field_name == "extra_disks" and key == ROOT_SERIAL:
                raise ValueError(f"{key!r} is the root disk's serial; choose another disk name")
        return value

    @model_validator(mode="after")
    def _fresh_disk(self) -> VMConfig:
        if self.root_filesystem is not None and self.base_image is not None:
            raise ValueError(
                "rootFilesystem formats a new, empty disk; it cannot go with baseImage"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        problem = name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
            raise ValueError(f"{value!r} is not a user name")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise ValueError(f"{value!r} is not a libvirt URI or a host name")
        return value

    @field_validator("machine")
    @classmethod
    def _machine(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise ValueError(f"{value!r} is not a QEMU machine type")
        return value


def describe_error(error: ValidationError, what: str) -> str:
    """Pydantic's multi-line report as one line naming the offending fields."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or what
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return f"invalid {what}: " + "; ".join(parts)


SCHEMAS: dict[type, type[_Model]] = {
    models.VMConfig: VMConfig,
    models.NetworkConfig: NetworkConfig,
    models.PortForward: PortForward,
    models.BootTest: BootTest,
    models.Share: Share,
    models.ExtraDisk: ExtraDisk,
    models.RootFilesystem: RootFilesystem,
}


def validate(model: type[T], data: Any, what: str) -> T:
    """DATA validated as MODEL (a class of ``models``); what is wrong is an InvalidInput."""
    try:
        checked = SCHEMAS[model].model_validate(data)
    except ValidationError as error:
        raise InvalidInput(describe_error(error, what)) from None
    return converted(model, checked)


def converted(model: type[T], checked: BaseModel) -> T:
    """A validated pydantic model as MODEL, through the JSON data the state directory holds."""
    return models.load(model, checked.model_dump(mode="json"))


def checked(value: T, what: str) -> T:
    """VALUE (an instance of ``models``), validated: what the Python API was handed."""
    return validate(type(value), models.dump(value), what)


def parse_forward(spec: str) -> models.PortForward:
    """``tcp:HOSTPORT:GUESTPORT`` (protocol optional)."""
    parts = spec.split(":")
    if len(parts) == 2:
        parts.insert(0, "tcp")
    host_ok = len(parts) == 3 and (_DIGITS.fullmatch(parts[1]) or parts[1] == "auto")
    if not host_ok or not _DIGITS.fullmatch(parts[2]):
        raise InvalidInput(
            f"invalid port forward {spec!r}: expected tcp:HOSTPORT:GUESTPORT (HOSTPORT may be auto)"
        )
    host: int | str = "auto" if parts[1] == "auto" else int(parts[1])
    return validate(
        models.PortForward,
        {"protocol": parts[0], "host_port": host, "guest_port": int(parts[2])},
        "forward",
    )
