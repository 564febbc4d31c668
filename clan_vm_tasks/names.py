"""VM names double as directory and clan machine names, so they are kept strict; a VM's
MAC address is derived from its name."""

from __future__ import annotations

import re

from clan_vm_tasks.errors import InvalidInput

MAX_NAME_LENGTH = 63
# clan's machine-name rule (a VM can become a clan machine, its name is its hostname).
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")
# What VMs created before that rule may be called: still found, stopped and deleted.
_LEGACY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def name_problem(name: str) -> str | None:
    """Why NAME cannot be a new VM's name, or None when it can."""
    if not name:
        return "VM name must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"VM name is longer than {MAX_NAME_LENGTH} characters"
    if not _NAME.fullmatch(name):
        return (
            f"invalid VM name {name!r}: use letters, digits and '-' (not first or last), "
            "as clan machine names and hostnames do"
        )
    return None


def check_new_name(name: str) -> str:
    problem = name_problem(name)
    if problem:
        raise InvalidInput(problem)
    return name


def check_name(name: str) -> str:
    """A name that may refer to an existing VM (also one named before the current rule)."""
    if _LEGACY_NAME.fullmatch(name):
        return name
    return check_new_name(name)


def sha256(data: bytes) -> bytes:
    """The SHA-256 digest of DATA, from CPython's own implementation when it has one:
    ``hashlib`` loads OpenSSL first, some 3 ms of every command that names a socket
    directory, a tap device or a MAC. The digests are the same."""
    try:
        from _sha2 import sha256 as new  # type: ignore[import-not-found]  # Python 3.12+
    except ImportError:
        try:
            from _sha256 import sha256 as new  # type: ignore[import-not-found]
        except ImportError:
            from hashlib import sha256 as new
    digest: bytes = new(data).digest()
    return digest


def mac_for(name: str) -> str:
    """A locally administered unicast MAC that is the same for a name on every host."""
    digest = sha256(f"clan-vm:{name}".encode())
    octets = [0x02, *digest[:5]]  # 0x02: locally administered, unicast
    return ":".join(f"{o:02x}" for o in octets)


# A libvirt host is named in the settings file (``hosts:``) or given as a libvirt URI.
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_TRANSPORTS = ("", "unix", "ssh", "libssh", "libssh2", "tcp", "tls", "ext")
_URI_PARAMS = {
    "keyfile",
    "no_verify",
    "no_tty",
    "known_hosts",
    "known_hosts_verify",
    "sshauth",
    "pkipath",
    "tls_priority",
    "proxy",
    "mode",
    "socket",
    "netcat",
    "command",
}
# What makes libvirt run a program on this machine: only the user's own settings file may.
_RUNS_PROGRAMS = {"command"}


def host_name_problem(name: str) -> str | None:
    if not _HOST_NAME.fullmatch(name):
        return (
            f"invalid host name {name!r}: use letters, digits, '.', '_' and '-' "
            "(or give a libvirt URI such as qemu+ssh://root@hv1/system)"
        )
    return None


def uri_problem(uri: str, *, trusted: bool) -> str | None:
    """Why URI is not a libvirt URI of the QEMU driver we can use, or None. Only a TRUSTED
    URI (from the settings file) may name a program for libvirt to run (``command=``,
    ``qemu+ext``); a VM definition may come from someone else's flake."""
    from urllib.parse import parse_qsl, urlsplit  # lazy: list never parses URIs

    try:
        parts = urlsplit(uri)
        params = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as error:
        return f"invalid libvirt URI {uri!r}: {error}"
    driver, _, transport = parts.scheme.partition("+")
    if driver != "qemu" or transport not in _TRANSPORTS or "://" not in uri:
        return (
            f"invalid libvirt URI {uri!r}: expected qemu:///system or qemu+ssh://USER@HOST/system"
        )
    if parts.path not in ("/system", "/session"):
        return f"invalid libvirt URI {uri!r}: the path must be /system or /session"
    if parts.fragment or any(c.isspace() or ord(c) < 32 for c in uri):
        return f"invalid libvirt URI {uri!r}"
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number in range)
    except ValueError:
        return f"invalid libvirt URI {uri!r}: bad port"
    if parts.password is not None:
        return f"invalid libvirt URI {uri!r}: no passwords in URIs (libvirt uses SSH keys)"
    for key, value in params:
        if key not in _URI_PARAMS:
            return f"invalid libvirt URI {uri!r}: unknown parameter {key!r}"
        if any(c.isspace() or ord(c) < 32 or c in "&?#" for c in value):  # once decoded
            return f"invalid libvirt URI {uri!r}: parameter {key!r} has a space or a separator"
        if key in _RUNS_PROGRAMS and not trusted:
            return (
                f"libvirt URI {uri!r} runs a program ({key}=): name the host in the settings "
                "file (hosts:) instead"
            )
    if transport == "ext" and not trusted:
        return f"libvirt URI {uri!r} runs a program (qemu+ext): name it in the settings file"
    return None
