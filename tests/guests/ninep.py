"""A guest that reads the host's Nix store over 9p, as a NixOS VM of qemu-vm.nix does: the
example guest's busybox initrd on Debian's generic kernel (Debian's cloud kernel, which the
example guest boots, has no 9p), built once and cached.

At boot its init mounts the 9p share ``nix-store`` at ``/nix/.ro-store`` with qemu-vm.nix's
options, under a writable overlay at ``/nix/store``, and links ``/run/current-system`` and
``/run/booted-system`` to the system that ``init=`` on the kernel command line names (what
NixOS' stage 2 does). Then, as the example guest: ``clan-guest: READY``, a shell on the
serial console, qemu-ga on the agent port, power-off on the ACPI button. Without the share
it boots all the same.

``python -m tests.guests.ninep [DIR]`` builds it (default ``.cache/guest-9p``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from examples import guest as example

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = ROOT / ".cache" / "guest-9p"
KERNEL_PACKAGE = "linux-image-amd64"  # Debian's generic kernel (its 9p is in modules)
MODULES = (*example.MODULES[:-2], "netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "overlay")
STORE_MOUNTED = "clan-guest: store mounted"

# The example guest's init, with the store and the system mounted and linked first.
_STORE = f"""
mkdir -p /nix/.ro-store /nix/.rw-store /nix/store
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=16384,cache=loose nix-store /nix/.ro-store
then
  mount -t tmpfs -o mode=0755 tmpfs /nix/.rw-store
  mkdir -p /nix/.rw-store/upper /nix/.rw-store/work
  layers=lowerdir=/nix/.ro-store,upperdir=/nix/.rw-store/upper,workdir=/nix/.rw-store/work
  mount -t overlay overlay -o $layers /nix/store
  echo "{STORE_MOUNTED}"
fi
system=$(sed -n 's/.*init=\\(\\/nix\\/store\\/[^ ]*\\)\\/init.*/\\1/p' /proc/cmdline)
if [ -n "$system" ]; then
  ln -sfn "$system" /run/current-system
  ln -sfn "$system" /run/booted-system
fi
"""
INIT_SCRIPT = example.INIT_SCRIPT.replace("\nhostname ", _STORE + "hostname ", 1).replace(
    " ".join(example.MODULES), " ".join(MODULES)
)


def fetch_kernel(out: Path) -> None:
    """Download Debian's generic kernel; keep vmlinuz and the modules the guest loads."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        depends = example._run(["apt-cache", "depends", KERNEL_PACKAGE], work)
        versioned = [
            line.split(":", 1)[1].strip()
            for line in depends.splitlines()
            if line.strip().startswith("Depends:") and "linux-image-" in line
        ]
        if not versioned:
            raise SystemExit(f"error: apt knows no {KERNEL_PACKAGE}; run apt-get update")
        example._run(["apt-get", "download", versioned[0]], work)
        deb = next(work.glob("linux-image-*.deb"))
        example._run(["dpkg-deb", "-x", str(deb), "root"], work)
        modules = out / "modules"
        modules.mkdir(parents=True, exist_ok=True)
        for name in MODULES:
            found = next((work / "root/lib/modules").rglob(f"{name}.ko"))
            example._install(found, modules / f"{name}.ko")
        example._install(next((work / "root/boot").glob("vmlinuz-*")), out / "vmlinuz")


def built(out: Path) -> bool:
    try:
        initrd = (out / "initrd").read_bytes()
    except OSError:
        return False
    return (out / "vmlinuz").is_file() and INIT_SCRIPT.encode() in initrd


def build(out: Path = DEFAULT_CACHE_DIR, busybox: Path = Path("/bin/busybox")) -> tuple[Path, Path]:
    """OUT/vmlinuz and OUT/initrd (the kernel and qemu-ga fetched only once)."""
    out.mkdir(parents=True, exist_ok=True)
    if not all((out / "modules" / f"{m}.ko").exists() for m in MODULES):
        fetch_kernel(out)
    if not (out / "qemu-ga").exists():
        example.fetch_agent(out)
    entries: list[tuple[str, int, bytes]] = [
        (d, example.DIR, b"") for d in ("bin", "etc", "etc/acpi", "lib", "lib/modules", "sbin")
    ]
    entries += [
        ("init", example.EXE, INIT_SCRIPT.encode()),
        ("bin/busybox", example.EXE, busybox.read_bytes()),
        ("bin/sh", 0o120777, b"busybox"),
        ("etc/acpid.conf", example.FILE, b"PWRF power.sh\n"),
        ("etc/acpi/power.sh", example.EXE, example.POWER_SCRIPT.encode()),
    ]
    entries += [
        (f"lib/modules/{m}.ko", example.FILE, (out / "modules" / f"{m}.ko").read_bytes())
        for m in MODULES
    ]
    present = {name for name, _, _ in entries}
    entries += [e for e in example.agent_entries(out / "qemu-ga") if e[0] not in present]
    tmp = out / f"initrd.tmp.{os.getpid()}"
    tmp.write_bytes(example.cpio_newc(entries))
    os.replace(tmp, out / "initrd")
    return out / "vmlinuz", out / "initrd"


def ensure(out: Path = DEFAULT_CACHE_DIR) -> tuple[Path, Path]:
    return (out / "vmlinuz", out / "initrd") if built(out) else build(out)


if __name__ == "__main__":
    kernel, initrd = build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE_DIR)
    print(f"kernel {kernel}\ninitrd {initrd}")
