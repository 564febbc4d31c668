"""A VM's files on its host, as volumes of the host's ``default`` storage pool.

Everything goes through libvirt's storage API, so a remote host needs no shared file
system: the disk ``NAME.qcow2`` (created there, or uploaded when its file system is made
on this machine), the kernel and initrd uploaded as ``NAME.kernel-HASH`` and
``NAME.initrd-HASH`` (named by content: an unchanged file is never sent again), the VM's
own shared directories ``NAME.share-TAG`` (directory volumes), and the serial console log
``NAME.console.log`` that libvirt's virtlogd writes beside them and that is downloaded the
same way.
"""

from __future__ import annotations

import hashlib
import math
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from clan_vm_tasks.backends.libvirt import domain_xml, remote
from clan_vm_tasks.backends.libvirt.connection import Host, LibvirtFailure, lib
from clan_vm_tasks.errors import ClanVMError

POOL = "default"
TRANSFER_TIMEOUT = 300.0
CHUNK = 1 << 20
REFRESH_TRIES = 5


def disk_volume(name: str) -> str:
    return f"{name}.qcow2"


def console_volume(name: str) -> str:
    return f"{name}.console.log"


def share_volume(name: str, tag: str) -> str:
    return f"{name}.share-{tag}"


def pool(host: Host) -> Any:
    """The host's ``default`` pool, started if it is not running."""
    conn = host.conn()
    try:
        found = host.call(conn.storagePoolLookupByName, POOL)
    except LibvirtFailure as failure:
        if failure.code != lib().VIR_ERR_NO_STORAGE_POOL:
            raise
        raise ClanVMError(
            f"host {host.label} has no storage pool '{POOL}': define one there "
            f"(virsh pool-define-as {POOL} dir --target /var/lib/libvirt/images; "
            f"virsh pool-build {POOL}; virsh pool-start {POOL}; virsh pool-autostart {POOL})"
        ) from None
    if not host.call(found.isActive):
        host.call(found.create, 0)
    return found


def pool_path(host: Host, found: Any) -> str:
    target = ET.fromstring(host.call(found.XMLDesc, 0)).findtext("target/path")
    if not target:
        raise ClanVMError(f"storage pool '{POOL}' of host {host.label} has no directory")
    return target


def lookup(host: Host, found: Any, volume: str) -> Any | None:
    try:
        return host.call(found.storageVolLookupByName, volume)
    except LibvirtFailure as failure:
        if failure.code == lib().VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def create_disk(
    host: Host, found: Any, name: str, size_mib: int, content: Path | None = None
) -> Any:
    """A new qcow2 disk: empty, its metadata preallocated (as the QEMU backend's), or the
    qcow2 image CONTENT made on this machine (a file system), sent as it is."""
    spec = domain_xml.volume_xml(disk_volume(name), size_mib << 20, "qcow2")
    if content is None:
        flags = lib().VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA
        return host.call(found.createXML, spec, flags, timeout=TRANSFER_TIMEOUT)
    # Without preallocation the new file is a bare header, shorter than CONTENT: the upload
    # replaces all of it.
    vol = host.call(found.createXML, spec, 0, timeout=TRANSFER_TIMEOUT)
    _upload(host, vol, content, content.stat().st_size)
    return vol


def share_dir(host: Host, found: Any, name: str, tag: str) -> str:
    """The path on the host of the VM's own directory for share TAG, made if it is not
    there (a directory volume: a remote host needs no file system shared with this one)."""
    vol = lookup(host, found, share_volume(name, tag))
    if vol is None:
        vol = host.call(
            found.createXML, domain_xml.directory_volume_xml(share_volume(name, tag)), 0
        )
    return str(host.call(vol.path))


def size_mib(host: Host, vol: Any) -> int:
    _kind, capacity, _allocation = host.call(vol.info)
    return math.ceil(int(capacity) / (1 << 20))


def _upload(host: Host, vol: Any, path: Path, size: int) -> None:
    conn = host.conn()

    def send() -> None:
        stream = conn.newStream(0)
        try:
            vol.upload(stream, 0, size, 0)
            with path.open("rb") as source:
                while chunk := source.read(CHUNK):
                    while chunk:
                        chunk = chunk[stream.send(chunk) :]
            stream.finish()
        except BaseException:
            try:
                stream.abort()
            except lib().libvirtError:
                pass
            raise

    host.call(send, timeout=TRANSFER_TIMEOUT)


def boot_file(host: Host, found: Any, name: str, kind: str, path: Path) -> str:
    """PATH (a kernel or initrd of this machine) as a volume on the host; its path there.
    Older uploads of the same kind are removed."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    wanted = f"{name}.{kind}-{digest}"
    prefix = f"{name}.{kind}-"
    for vol in host.call(found.listAllVolumes, 0):
        if vol.name().startswith(prefix) and vol.name() != wanted:
            host.call(vol.delete, 0)
    vol = lookup(host, found, wanted)
    if vol is None:
        size = path.stat().st_size
        vol = host.call(found.createXML, domain_xml.volume_xml(wanted, size, "raw"), 0)
        try:
            _upload(host, vol, path, size)
        except BaseException:
            host.call(vol.delete, 0)  # a half upload must not pass for the file
            raise
    return str(host.call(vol.path))


def _refresh(host: Host, found: Any) -> None:
    """Let the pool see files made beside libvirt's storage API (virtlogd's console logs).
    A refresh fails when another client removes a volume meanwhile: then try again."""
    for attempt in range(REFRESH_TRIES):
        try:
            host.call(found.refresh, 0)
            return
        except LibvirtFailure:
            if attempt == REFRESH_TRIES - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def download(host: Host, found: Any, volume: str) -> bytes:
    """A volume's content (b"" when there is none); used for the console log."""
    _refresh(host, found)  # virtlogd made the file: the pool must look again
    vol = lookup(host, found, volume)
    if vol is None:
        return b""
    conn = host.conn()

    def receive() -> bytes:
        stream = conn.newStream(0)
        vol.download(stream, 0, 0, 0)
        chunks = []
        while True:
            data = stream.recv(CHUNK)
            if not isinstance(data, bytes) or not data:
                break
            chunks.append(data)
        stream.finish()
        return b"".join(chunks)

    data: bytes = host.call(receive, timeout=TRANSFER_TIMEOUT)
    return data


def remove(host: Host, found: Any, name: str, *, keep_disk: bool) -> str | None:
    """Delete the VM's volumes (the disk only unless KEEP_DISK); the kept disk's path."""
    _refresh(host, found)
    kept = None
    for vol in host.call(found.listAllVolumes, 0):
        volume = vol.name()
        if volume == disk_volume(name):
            if keep_disk:
                kept = str(host.call(vol.path))
                continue
        elif volume.startswith(f"{name}.share-"):
            _remove_dir(host, vol, name)
            continue
        elif not volume.startswith((f"{name}.kernel-", f"{name}.initrd-", console_volume(name))):
            continue
        host.call(vol.delete, 0)
    return kept


def _remove_dir(host: Host, vol: Any, name: str) -> None:
    """Remove a directory volume, with what the guest left in it."""
    try:
        host.call(vol.delete, 0)
    except LibvirtFailure:  # not empty
        path = str(host.call(vol.path))
        what = f"removing the shared directory {path} of VM '{name}' on host {host.label}"
        remote.remove_tree(host.uri, path, what)
