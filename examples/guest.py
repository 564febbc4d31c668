"""The bundled example guest: Debian's cloud kernel plus a busybox initrd.

It boots in a couple of seconds under TCG, prints ``clan-guest: READY`` on the
serial console, runs a shell there, and powers off when the ACPI power button
is pressed (so a graceful stop can be told apart from a hard one). Debian's
``qemu-ga`` (with the host's copies of its libraries) answers on the guest-agent
port. The demo and
the test suite both use it; ``python -m examples.guest DIR``
builds it into DIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

READY_LINE = "clan-guest: READY"
POWER_BUTTON_LINE = "clan-guest: power button pressed"
# no_timer_check: under TCG on a busy host the kernel's IO-APIC timer check can fail and panic.
KERNEL_APPEND = "console=ttyS0 quiet no_timer_check"

# Load order matters: each module needs the ones before it.
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "evdev",
    "button",
    "fuse",
    "virtiofs",  # mount -t virtiofs TAG DIR
)

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /var/log /root
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {" ".join(MODULES)}; do insmod /lib/modules/$m.ko 2>/dev/null; done
hostname "$(sed -n 's/.*clan.hostname=\\([^ ]*\\).*/\\1/p' /proc/cmdline)"
# clan.noacpid simulates a guest that ignores the power button.
grep -q clan.noacpid /proc/cmdline || acpid -c /etc/acpi -a /etc/acpid.conf -l /var/log/acpid.log
ip link set lo up
export PATH=/bin:/sbin
# clan.noagent simulates a guest without a guest agent.
for port in /sys/class/virtio-ports/*; do
  grep -q clan.noagent /proc/cmdline && break
  [ -x /bin/qemu-ga ] && [ "$(cat $port/name 2>/dev/null)" = org.qemu.guest_agent.0 ] &&
    qemu-ga -m virtio-serial -p /dev/$(basename $port) -t /run -f /run/qemu-ga.pid -d
done
for b in /sys/block/vd*; do
  [ -e "$b" ] && echo "clan-guest: disk $(basename $b) $(( $(cat $b/size) / 2048 )) MiB"
done
echo "clan-guest: cpus $(grep -c ^processor /proc/cpuinfo)"
echo "{READY_LINE}"
export PS1='guest# ' HOME=/root
while true; do setsid cttyhack sh; done
"""

POWER_SCRIPT = f"""#!/bin/sh
echo "{POWER_BUTTON_LINE}, powering off" > /dev/console
sync
poweroff -f
"""


def cpio_newc(entries: Iterable[tuple[str, int, bytes]]) -> bytes:
    """An initramfs archive in the kernel's "newc" cpio format.

    Each entry is (path, mode, content); directories have empty content.
    """
    out = bytearray()

    def add(name: str, mode: int, data: bytes, ino: int) -> None:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    ino = 0
    for ino, (name, mode, data) in enumerate(entries, start=1):
        add(name, mode, data, ino)
    add("TRAILER!!!", 0, b"", ino + 1)
    return bytes(out)


DIR = 0o040755
EXE = 0o100755
FILE = 0o100644


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries BINARY loads (and the loader), as ldd finds them on this host."""
    found = []
    for line in _run(["ldd", str(binary.absolute())], binary.parent).splitlines():
        words = line.split()
        path = words[2] if len(words) > 2 and words[1] == "=>" else words[0]
        if path.startswith("/"):
            found.append(Path(path))
    return found


def agent_entries(agent: Path) -> list[tuple[str, int, bytes]]:
    """qemu-ga and the host's copies of its libraries, at the paths it looks for them."""
    entries: list[tuple[str, int, bytes]] = [("bin/qemu-ga", EXE, agent.read_bytes())]
    directories: set[str] = set()
    for library in shared_libraries(agent):
        inside = str(library).lstrip("/")
        parent = str(Path(inside).parent)
        while parent not in (".", "") and parent not in directories:
            directories.add(parent)
            parent = str(Path(parent).parent)
        entries.append((inside, EXE, library.resolve().read_bytes()))
    return [(d, DIR, b"") for d in sorted(directories)] + entries


def initrd_entries(
    busybox: Path, modules_dir: Path, agent: Path | None = None
) -> list[tuple[str, int, bytes]]:
    entries: list[tuple[str, int, bytes]] = [
        (d, DIR, b"") for d in ("bin", "etc", "etc/acpi", "lib", "lib/modules", "sbin")
    ]
    entries += [
        ("init", EXE, INIT_SCRIPT.encode()),
        ("bin/busybox", EXE, busybox.read_bytes()),
        ("bin/sh", 0o120777, b"busybox"),
        ("etc/acpid.conf", FILE, b"PWRF power.sh\n"),
        ("etc/acpi/power.sh", EXE, POWER_SCRIPT.encode()),
    ]
    for name in MODULES:
        entries.append((f"lib/modules/{name}.ko", FILE, (modules_dir / f"{name}.ko").read_bytes()))
    if agent is not None:
        present = {name for name, _, _ in entries}
        entries += [e for e in agent_entries(agent) if e[0] not in present]
    return entries


def _run(argv: list[str], cwd: Path) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv)} failed: {result.stderr.strip()[-400:]}")
    return result.stdout


def _install(source: Path, target: Path) -> None:
    """Copy SOURCE to TARGET whole or not at all (two builds at once, test workers, never
    see each other's half-written files)."""
    tmp = target.with_name(f"{target.name}.tmp.{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def fetch_kernel(out: Path) -> None:
    """Download Debian's cloud kernel and keep vmlinuz plus the modules we load."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # The meta package depends on the current versioned image package.
        depends = _run(["apt-cache", "depends", "linux-image-cloud-amd64"], work)
        versioned = [
            line.split(":", 1)[1].strip()
            for line in depends.splitlines()
            if line.strip().startswith("Depends:") and "linux-image-" in line
        ]
        if not versioned:
            raise SystemExit("error: apt knows no linux-image-cloud-amd64; run apt-get update")
        _run(["apt-get", "download", versioned[0]], work)
        deb = next(work.glob("linux-image-*.deb"))
        _run(["dpkg-deb", "-x", str(deb), "root"], work)
        vmlinuz = next((work / "root/boot").glob("vmlinuz-*"))
        modules = out / "modules"
        modules.mkdir(parents=True, exist_ok=True)
        for name in MODULES:
            _install(next((work / "root/lib/modules").rglob(f"{name}.ko")), modules / f"{name}.ko")
        _install(vmlinuz, out / "vmlinuz")


def fetch_agent(out: Path) -> None:
    """Download Debian's qemu-guest-agent package and keep its qemu-ga."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", "qemu-guest-agent"], work)
        deb = next(work.glob("qemu-guest-agent_*.deb"))
        _run(["dpkg-deb", "-x", str(deb), "root"], work)
        _install(work / "root/usr/sbin/qemu-ga", out / "qemu-ga")


def build(out: Path, busybox: Path = Path("/bin/busybox")) -> tuple[Path, Path]:
    """Make OUT/vmlinuz and OUT/initrd (fetching the kernel and qemu-ga only once)."""
    out.mkdir(parents=True, exist_ok=True)
    kernel, initrd = out / "vmlinuz", out / "initrd"
    if not kernel.exists() or not all((out / "modules" / f"{m}.ko").exists() for m in MODULES):
        fetch_kernel(out)  # a cache from before a module was added lacks it
    if not (out / "qemu-ga").exists():
        fetch_agent(out)
    if not busybox.exists():
        raise SystemExit(f"error: {busybox} not found; install busybox-static")
    data = cpio_newc(initrd_entries(busybox, out / "modules", out / "qemu-ga"))
    tmp = out / f"initrd.tmp.{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, initrd)
    return kernel, initrd


def built(out: Path) -> bool:
    """Whether OUT holds a kernel and an initrd with every module the guest loads (a cache
    from before a module was added is rebuilt)."""
    try:
        initrd = (out / "initrd").read_bytes()  # newc: the names are plain text
    except OSError:
        return False
    names = (f"lib/modules/{name}.ko".encode() for name in MODULES)
    return (out / "vmlinuz").is_file() and all(name in initrd for name in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path, help="directory for vmlinuz and initrd")
    args = parser.parse_args(argv)
    kernel, initrd = build(args.out)
    print(f"kernel {kernel}\ninitrd {initrd}\nappend {KERNEL_APPEND}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
