"""What a VM definition is, as the operations hold it: plain frozen dataclasses.

A definition from outside (Nix JSON, command-line flags, the Python API) is validated by
the pydantic schema (``schema``) before it is written; one read back from the state
directory, which only ever holds what was validated, is only checked for its shape here
(``load``), so that a start pays for neither pydantic nor its schema. ``tests/test_models``
proves the two describe the same fields, types and defaults.
"""

import dataclasses
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

NetworkMode = Literal["user", "nat", "bridge", "tap", "none"]
Accel = Literal["auto", "kvm", "tcg"]
ROOT_SERIAL = "root"  # the root disk's serial (/dev/disk/by-id/virtio-root), as in qemu-vm.nix
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class PortForward:
    """A host port on 127.0.0.1 forwarded to a guest port (user-mode networking).

    ``host_port`` "auto" is a free port chosen at each start (see ``hostnet``);
    ``guest_address`` None is the guest's own address (QEMU's default).
    """

    protocol: Literal["tcp", "udp"] = "tcp"
    host_port: int | Literal["auto"]
    guest_port: int
    guest_address: str | None = None

    def __str__(self) -> str:
        guest = f"{self.guest_address}:{self.guest_port}" if self.guest_address else self.guest_port
        return f"{self.protocol}:127.0.0.1:{self.host_port}->{guest}"


# A forward as a VM's state records it at start: "PROTO:ADDRESS:PORT->[GUEST_ADDRESS:]PORT",
# the host port chosen, the address the host listens on (127.0.0.1 here; a libvirt host's own).
_RECORDED = re.compile(r"(tcp|udp):(.+):([0-9]{1,5})->(?:(.+):)?([0-9]{1,5})")


def recorded_forward(text: str) -> tuple[str, PortForward] | None:
    """The listening address and the forward of a recorded forward; None for anything else
    (a state file is read tolerantly)."""
    found = _RECORDED.fullmatch(text)
    if found is None:
        return None
    proto, address, port, guest_address, guest_port = found.groups()
    if not (0 < int(port) < 65536 and 0 < int(guest_port) < 65536):
        return None
    protocol: Literal["tcp", "udp"] = "udp" if proto == "udp" else "tcp"
    forward = PortForward(
        protocol=protocol,
        host_port=int(port),
        guest_port=int(guest_port),
        guest_address=guest_address,
    )
    return address, forward


def recorded_to(
    recorded: list[str], protocol: str, guest_port: int, guest_address: str | None = None
) -> tuple[str, PortForward] | None:
    """The first of the RECORDED forwards that goes to GUEST_PORT (at GUEST_ADDRESS) over
    PROTOCOL, as ``recorded_forward`` reads it; None when there is none."""
    for text in recorded:
        found = recorded_forward(text)
        if found is not None and (
            found[1].protocol,
            found[1].guest_address,
            found[1].guest_port,
        ) == (protocol, guest_address, guest_port):
            return found
    return None


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    mode: NetworkMode = "user"
    bridge: str | None = None
    tap: str | None = None  # a tap device made by the user, for mode "tap"
    mac: str | None = None
    restrict: bool = False  # user mode: the guest reaches neither host nor outside
    forward_ports: list[PortForward] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class BootTest:
    """What ``boot-test`` waits for: text on the serial console, within a time limit; then
    the commands it runs in the guest (through the guest agent), each of which must exit 0."""

    expect: str | None = None
    timeout: int = 120  # seconds
    checks: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Share:
    """A host directory the guest sees over 9p or virtiofs, by mount tag (the key in
    ``shares``)."""

    source: Path | None = None  # None: a directory of the VM's own (vms/NAME/shares/TAG)
    target: str | None = None  # where the guest mounts it (the guest's business)
    read_only: bool = True
    type: Literal["9p", "virtiofs"] = "9p"
    security_model: Literal["passthrough", "mapped-xattr", "mapped-file", "none"] = "mapped-xattr"
    # DEV:INO of the directory SOURCE led to when it was checked (and allowed): the launch
    # shares that directory or refuses. Set by the tool from a flake's definition, never
    # taken from one (nix.trust).
    identity: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExtraDisk:
    size: int  # MiB


@dataclass(frozen=True, kw_only=True)
class RootFilesystem:
    """A file system made on the root disk when the VM is created."""

    type: Literal["ext4"] = "ext4"
    label: str = "nixos"


@dataclass(frozen=True, kw_only=True)
class VMConfig:
    """What a VM is: everything needed to launch it, nothing about whether it runs."""

    name: str
    cpus: int = 2
    memory: int = 2048  # MiB
    disk_size: int = 20480  # MiB
    kernel: Path | None = None
    initrd: Path | None = None
    base_image: Path | None = None  # read-only backing file of a copy-on-write disk
    append: str | None = None
    machine: str = "q35"
    accel: Accel = "auto"
    network: NetworkConfig = field(default_factory=NetworkConfig)
    qemu_args: list[str] = field(default_factory=list)
    boot_test: BootTest = field(default_factory=BootTest)
    agent: bool = True  # a virtio-serial channel for the QEMU guest agent
    ssh_user: str = "root"  # whose authorized_keys get the VM's key (``ssh``)
    sshd: bool = False  # a NixOS guest runs sshd (its VM variant says so; recorded only)
    host: str | None = None  # a libvirt host (URI or a name from the settings); None: here
    nixos_configuration: str | None = None  # the NixOS configuration this VM is a variant of
    root_filesystem: RootFilesystem | None = None  # made on the disk at create
    graphics: bool = False  # a display (virtio-vga over SPICE); else serial only
    shares: dict[str, Share] = field(default_factory=dict)  # by mount tag
    extra_disks: dict[str, ExtraDisk] = field(default_factory=dict)  # by name (serial)


def disk_order(name: str) -> list[Any]:
    """Extra disks are attached in the natural order of their names (empty2 before empty10),
    so that NixOS' emptyDiskImages keep their list's order (/dev/vdb, /dev/vdc, ...)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"([0-9]+)", name)]


def dump(value: Any) -> Any:
    """VALUE as JSON data, with the field names of the state directory (snake_case)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [dump(item) for item in value]
    if isinstance(value, dict):
        return {key: dump(item) for key, item in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


class Malformed(ValueError):
    """Data that does not have a definition's shape; the message names where."""


def load(model: type[T], data: object, where: str = "") -> T:
    """DATA, as ``dump`` wrote it, as MODEL: every field of the right type, none unknown,
    none missing. Values are not checked again (the schema did when they were written)."""
    if not isinstance(data, dict):
        raise Malformed(f"{where or 'definition'}: not an object")
    known = {f.name: f for f in dataclasses.fields(model)}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            raise Malformed(f"{_at(where, key)}: not a field")
    for name, spec in known.items():
        unset = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        if unset and name not in data:
            raise Malformed(f"{_at(where, name)}: missing")
    values = {key: _value(known[key].type, value, _at(where, key)) for key, value in data.items()}
    return model(**values)


def _at(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _value(kind: Any, value: object, where: str) -> Any:
    origin = get_origin(kind)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return load(kind, value, where)
    if origin is Literal:
        if isinstance(value, str) and value in get_args(kind):
            return value
    elif origin is Union or origin is types.UnionType:
        for arm in get_args(kind):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _value(arm, value, where)
            except Malformed:
                continue
    elif origin is list:
        if isinstance(value, list):
            (item,) = get_args(kind)
            return [_value(item, v, f"{where}.{i}") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            item = get_args(kind)[1]
            return {k: _value(item, v, f"{where}.{k}") for k, v in value.items()}
    elif kind is Path:
        if isinstance(value, str):
            return Path(value)
    elif type(value) is kind:  # bool is not an int here, nor an int a bool
        return value
    shown = repr(value)
    shown = shown if len(shown) <= 60 else f"{shown[:57]}..."  # one line, however large
    raise Malformed(f"{where}: {shown} is not {_described(kind)}")


def _described(kind: Any) -> str:
    if get_origin(kind) in (Union, types.UnionType):
        return " or ".join(_described(arm) for arm in get_args(kind))
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(kind))
    names = {int: "an integer", str: "a string", bool: "true or false", Path: "a path"}
    return names.get(kind, "null" if kind is type(None) else f"a {kind.__name__}")
