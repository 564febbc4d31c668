"""Reaching a libvirt host: one connection per host and command, every call bounded.

libvirt-python calls cannot be cancelled, and a host that stops answering (a network
gone, a frozen machine) would block a call for ever. So every call runs in a thread of
its own with a deadline; a missed deadline drops the connection (the blocked thread is a
daemon and ends with the transport). Keepalive probes, which need libvirt's event loop
(run in a daemon thread), close a connection whose host went silent; ``qemu+ssh`` runs
ssh through a wrapper that bounds connecting, notices a dead server and never prompts.
Credentials are libvirt's own (SSH keys, the ssh agent); the tool stores none.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from clan_vm_tasks.backends.ssh import ssh_wrapper
from clan_vm_tasks.errors import ClanVMError, HostUnreachable

OPEN_TIMEOUT = 20.0  # ssh gives up connecting after SSH_CONNECT_TIMEOUT; this is the backstop
CALL_TIMEOUT = 30.0
KEEPALIVE = (5, 2)  # a probe every 5 s; 2 unanswered and the connection is closed
GIVEN_UP_FOR = 60.0  # a host that missed a deadline is not waited for again that soon
_lock = threading.Lock()
_module: ModuleType | None = None
_hosts: dict[tuple[str, str], Host] = {}


def lib() -> ModuleType:
    """The libvirt module, with its event loop running and its stderr chatter silenced."""
    global _module
    with _lock:
        if _module is None:
            try:
                import libvirt
            except ImportError:
                raise ClanVMError(
                    "libvirt-python is not installed (pip install libvirt-python; it builds "
                    "against libvirt-dev and pkg-config)"
                ) from None
            # Without a handler libvirt prints every error to stderr; the exceptions say it all.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            # Keepalive and console streams need an event loop, registered before any open.
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(target=_run_events, args=(libvirt,), daemon=True).start()
            _module = libvirt
        return _module


def qemu_lib() -> ModuleType:
    """libvirt_qemu: QEMU's monitor and guest agent through libvirt."""
    lib()
    import libvirt_qemu

    module: ModuleType = libvirt_qemu
    return module


def _run_events(libvirt: Any) -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


class LibvirtFailure(ClanVMError):
    """A call the host answered with an error (``code`` is libvirt's error code)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Deadline(Exception):
    pass


def _bounded(fn: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
    """FN(*ARGS) in a daemon thread; _Deadline when it has not returned within TIMEOUT."""
    box: list[tuple[bool, Any]] = []
    done = threading.Event()

    def run() -> None:
        try:
            box.append((True, fn(*args)))
        except BaseException as error:  # handed to the caller
            box.append((False, error))
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    if not done.wait(max(timeout, 0.01)):
        raise _Deadline
    ok, value = box[0]
    if ok:
        return value
    raise value


def _message(error: Any) -> str:
    text = str(error.get_error_message() or error).strip()
    # ssh's own reason is what matters; libvirt's socket prologue and epilogue add nothing.
    for head in ("Cannot recv data: ", "End of file while reading data: ", "internal error: "):
        text = text.removeprefix(head)
    for tail in (": Connection reset by peer", ": Input/output error"):
        text = text.removesuffix(tail)
    return " ".join(text.split())


def effective_uri(uri: str) -> str:
    """URI as opened: an ssh transport without a ``command=`` of the user's gets the
    bounded ssh wrapper."""
    parts = urlsplit(uri)
    if not parts.scheme.endswith("+ssh"):
        return uri
    params = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "command" for key, _ in params):
        return uri  # the user's own ssh command: bounding it is theirs to do
    params.append(("command", ssh_wrapper()))
    query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in params)
    return urlunsplit(parts._replace(query=query))


class Host:
    """One libvirt host as this command sees it: a connection opened on first use."""

    def __init__(self, label: str, uri: str) -> None:
        self.label = label  # how messages name it
        self.uri = uri
        self._conn: Any = None
        self._broken: tuple[str, float] | None = None  # why and when it was given up
        self.survey: dict[str, tuple[int, int]] | None = None  # list's one answer, if asked

    def unreachable(self, reason: str) -> HostUnreachable:
        return HostUnreachable(self.label, reason)

    def conn(self, timeout: float = OPEN_TIMEOUT) -> Any:
        libvirt = lib()
        if self._broken is not None:
            reason, since = self._broken
            if time.monotonic() - since < GIVEN_UP_FOR:
                raise self.unreachable(reason)
            self._broken = None
        if self._conn is not None and self._conn.isAlive():
            return self._conn
        uri = effective_uri(self.uri)
        try:
            conn = _bounded(libvirt.open, (uri,), timeout)
        except _Deadline:
            self._drop(f"no answer within {timeout:g}s")
            raise self.unreachable(f"no answer within {timeout:g}s") from None
        except libvirt.libvirtError as error:
            raise self.unreachable(_message(error)) from None
        # A local (unix socket) connection may not take keepalive; it cannot go silent either.
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(*KEEPALIVE)
        self._conn = conn
        return conn

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """FN(*ARGS) against this host, bounded: HostUnreachable when the host does not
        answer, LibvirtFailure when it answers with an error."""
        libvirt = lib()
        began = time.monotonic()
        self.conn(timeout)
        try:
            return _bounded(fn, args, timeout - (time.monotonic() - began))
        except _Deadline:
            self._drop(f"no answer within {timeout:g}s")
            raise self.unreachable(f"no answer within {timeout:g}s") from None
        except libvirt.libvirtError as error:
            if error.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE):
                self._drop(_message(error))
                raise self.unreachable(_message(error)) from None
            raise LibvirtFailure(_message(error), error.get_error_code()) from None

    def _drop(self, reason: str) -> None:
        # Not closed: close() on a hung connection can block too. It dies with the process.
        self._conn = None
        self._broken = (reason, time.monotonic())

    def domain(self, name: str, timeout: float = CALL_TIMEOUT) -> Any | None:
        """The domain named NAME, or None when the host has none."""
        conn = self.conn(timeout)
        try:
            return self.call(conn.lookupByName, name, timeout=timeout)
        except LibvirtFailure as failure:
            if failure.code == lib().VIR_ERR_NO_DOMAIN:
                return None
            raise

    def state(self, name: str, timeout: float = CALL_TIMEOUT) -> tuple[int, int] | None:
        """The domain's (state, reason), from list's survey when there is one; None when
        the host has no such domain."""
        if self.survey is not None:
            return self.survey.get(name)
        dom = self.domain(name, timeout)
        if dom is None:
            return None
        try:
            state, reason = self.call(dom.state, timeout=timeout)
        except LibvirtFailure as failure:
            if failure.code == lib().VIR_ERR_NO_DOMAIN:
                return None  # undefined between the two calls
            raise
        return int(state), int(reason)

    def take_survey(self, timeout: float) -> None:
        """Every domain's (state, reason) in one call."""
        libvirt = lib()
        began = time.monotonic()
        conn = self.conn(timeout)
        found = self.call(
            conn.getAllDomainStats,
            libvirt.VIR_DOMAIN_STATS_STATE,
            0,
            timeout=max(0.1, timeout - (time.monotonic() - began)),
        )
        self.survey = {
            dom.name(): (int(stats.get("state.state", 0)), int(stats.get("state.reason", 0)))
            for dom, stats in found
        }


def host(label: str, uri: str) -> Host:
    """The Host for URI (named LABEL), shared by everything this process does with it."""
    with _lock:
        found = _hosts.get((label, uri))
        if found is None:
            found = _hosts[(label, uri)] = Host(label, uri)
        return found
