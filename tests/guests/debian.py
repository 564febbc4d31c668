"""A minimal Debian 12 (bookworm) disk image for direct-kernel-boot test VMs, built once and cached.

``ensure_image()`` returns the cached image, building it first if needed (as root, with
debootstrap from the Debian archive; about two minutes). The outputs, in the cache directory:

- ``disk.qcow2``: ext4 with label ``debian-root`` directly on the disk (no partition table);
  meant as a read-only backing file for per-test copy-on-write overlays.
- ``vmlinuz``, ``initrd``: for QEMU's ``-kernel``/``-initrd``; ``append`` is the command line.
- ``image.json``: append line, root label, build date, package versions.

The guest: systemd as init, root shell (autologin) and kernel log on ttyS0, DHCP on the first
NIC via systemd-networkd, sshd (root by key only; host keys made at build time, so they are
the same for every boot of one image), qemu-guest-agent (started by udev when the
``org.qemu.guest_agent.0`` port exists) and logind powering off on the ACPI power button.

Run ``python -m tests.guests.debian [DIR]`` from the repository root to build and print paths.
``DEBIAN_MIRROR`` overrides the archive, which is otherwise the one apt on this machine uses.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = ROOT / ".cache" / "debian"

SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
ROOT_LABEL = "debian-root"
DISK_SIZE = "2G"
APPEND = f"console=ttyS0 no_timer_check root=LABEL={ROOT_LABEL} rw systemd.show_status=1"

# minbase plus what the guest needs. dbus: systemd-logind (power button) will not run
# without it, and debootstrap does not install Recommends.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "qemu-guest-agent",
    "openssh-server",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "iproute2",
)

# Files written into the root file system: path -> (mode, text).
FILES: dict[str, tuple[int, str]] = {
    "etc/hostname": (0o644, "debian\n"),
    "etc/hosts": (
        0o644,
        "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    ),
    "etc/fstab": (0o644, f"LABEL={ROOT_LABEL}\t/\text4\trw,errors=remount-ro\t0\t1\n"),
    # Empty, not absent: systemd makes a fresh id on each copy's first boot without treating
    # it as "first boot" (which would run systemd-firstboot and presets).
    "etc/machine-id": (0o444, ""),
    # debootstrap copied the build host's; 10.0.2.3 is QEMU user networking's DNS forwarder.
    "etc/resolv.conf": (0o644, "nameserver 10.0.2.3\n"),
    "etc/systemd/network/20-wired.network": (
        0o644,
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
    ),
    "etc/ssh/sshd_config.d/10-test-vm.conf": (
        0o644,
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n",
    ),
    # A root shell on the serial console, so tests can drive the guest without ssh.
    "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf": (
        0o644,
        "[Service]\nExecStart=\n"
        "ExecStart=-/sbin/agetty -o '-p -f -- \\\\u' --autologin root"
        " --keep-baud 115200,57600,38400,9600 - $TERM\n",
    ),
    # Only the drivers needed to find root: a far smaller initrd (and faster boot under TCG)
    # than MODULES=most. ext4 is built into the cloud kernel but listing it is harmless.
    "etc/initramfs-tools/conf.d/test-vm.conf": (0o644, "MODULES=list\nCOMPRESS=gzip\n"),
    "etc/initramfs-tools/modules": (0o644, "virtio_pci\nvirtio_blk\next4\n"),
    # Exists (empty, 0600) so that writing it through qemu-guest-agent keeps a mode sshd
    # accepts: guest-file-open creates new files world-writable (0666), which sshd refuses.
    "root/.ssh/authorized_keys": (0o600, ""),
    # Keep later package installs in the guest small too.
    "etc/dpkg/dpkg.cfg.d/01-nodoc": (
        0o644,
        "path-exclude=/usr/share/doc/*\npath-exclude=/usr/share/man/*\n"
        "path-exclude=/usr/share/info/*\npath-exclude=/usr/share/locale/*\n",
    ),
}

ENABLE = ("systemd-networkd.service", "ssh.service")
# Periodic jobs and a VT getty that only cost CPU in a short-lived TCG guest.
DISABLE = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@tty1.service",
)
# Trimmed after the build: caches, package lists and documentation.
PRUNE = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
# Bump when the build steps change in a way the constants above do not show.
RECIPE_VERSION = 1

OUTPUTS = ("disk.qcow2", "vmlinuz", "initrd", "image.json")
STAMP = "recipe.sha256"
CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}


@dataclass(frozen=True)
class DebianImage:
    disk: Path
    kernel: Path
    initrd: Path
    append: str
    info: Path  # image.json: versions, build date
    root_label: str = ROOT_LABEL

    def boot_args(self) -> list[str]:
        """QEMU arguments for a direct kernel boot (the disk is up to the caller)."""
        return ["-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", self.append]


class BuildError(RuntimeError):
    pass


def recipe_hash() -> str:
    recipe = {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "packages": PACKAGES,
        "files": FILES,
        "enable": ENABLE,
        "disable": DISABLE,
        "prune": PRUNE,
        "label": ROOT_LABEL,
        "size": DISK_SIZE,
        "append": APPEND,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _image(cache_dir: Path) -> DebianImage:
    return DebianImage(
        disk=cache_dir / "disk.qcow2",
        kernel=cache_dir / "vmlinuz",
        initrd=cache_dir / "initrd",
        append=APPEND,
        info=cache_dir / "image.json",
    )


def _is_complete(cache_dir: Path, digest: str) -> bool:
    stamp = cache_dir / STAMP
    return (
        all((cache_dir / name).is_file() for name in OUTPUTS)
        and stamp.is_file()
        and stamp.read_text().strip() == digest
    )


def ensure_image(cache_dir: Path = DEFAULT_CACHE_DIR) -> DebianImage:
    """Return the cached image in CACHE_DIR, building it first if it is missing or stale.

    Concurrent callers (pytest-xdist workers) serialise on a lock beside CACHE_DIR: one builds,
    the others wait and then use its result.
    """
    cache_dir = Path(cache_dir).absolute()
    digest = recipe_hash()
    if _is_complete(cache_dir, digest):
        return _image(cache_dir)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir.parent / f".{cache_dir.name}.lock"):
        if not _is_complete(cache_dir, digest):
            _build(cache_dir, digest)
    return _image(cache_dir)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _log(start: float, message: str) -> None:
    print(f"[debian-image {time.monotonic() - start:6.1f}s] {message}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str | Path], log: Path, env: dict[str, str] | None = None) -> str:
    """Run ARGV, appending its output to LOG; return its stdout. Raise BuildError on failure."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(map(str, argv))}\n")
        out.flush()
        proc = subprocess.run(
            [str(a) for a in argv],
            stdout=subprocess.PIPE,
            stderr=out,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            check=False,
        )
        out.write(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise BuildError(
            f"{argv[0]} exited with {proc.returncode}; end of its log"
            f" (kept as *-build-failed.log beside the cache dir):\n{tail}"
        )
    return proc.stdout


def _mirror() -> str:
    """The Debian archive this machine's apt uses, so the build goes where apt is allowed to."""
    if env := os.environ.get("DEBIAN_MIRROR"):
        return env
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in sources.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith(("#", " ")):
                    fields[key.strip().lower()] = value.strip()
            if (
                "deb" in fields.get("types", "").split()
                and SUITE in fields.get("suites", "").split()
            ):
                uris = fields.get("uris", "").split()
                if uris:
                    return uris[0]
    sources_list = Path("/etc/apt/sources.list")
    if sources_list.is_file():
        for line in sources_list.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    return FALLBACK_MIRROR


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below PATH, deepest (latest mounted) first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces and the like escaped as octal (\040).
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]))
        if point == path or path in point.parents:
            found.append(point)
    return found[::-1]


def _unmount_all(path: Path) -> None:
    for point in _mounts_under(path):
        if subprocess.run(["umount", str(point)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(point)], check=False)
    if left := _mounts_under(path):
        raise BuildError(f"could not unmount {', '.join(map(str, left))}")


def _remove_tree(path: Path) -> None:
    # Never rmtree through a bind mount of the host's /dev or /sys left by a killed build.
    _unmount_all(path)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _chroot_mounts(rootfs: Path) -> Iterator[None]:
    """/proc, /sys and /dev inside ROOTFS for tools that inspect the system (mkinitramfs)."""
    try:
        for name in ("proc", "sys", "dev"):
            subprocess.run(["mount", "--bind", f"/{name}", str(rootfs / name)], check=True)
        yield
    finally:
        _unmount_all(rootfs)


def _ensure_tools(start: float, log: Path) -> None:
    if os.geteuid() != 0:
        raise BuildError("building the Debian test image needs root (debootstrap, chroot, mount)")
    if shutil.which("debootstrap") is None:
        # Fresh machines lack it; apt works here since tests run as root on Debian.
        _log(start, "installing debootstrap with apt-get")
        install = ["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"]
        try:
            _run(install, log)
        except BuildError:
            _run(["apt-get", "update"], log)
            _run(install, log)
    for tool in ("mkfs.ext4", "qemu-img", "chroot", "mount", "umount"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is missing")


def _build(cache_dir: Path, digest: str) -> None:
    start = time.monotonic()
    # Clear leftovers of builds that were killed (we hold the lock, so none is running).
    for pattern in (f".{cache_dir.name}.build-*", f".{cache_dir.name}.old-*"):
        for stale in cache_dir.parent.glob(pattern):
            _remove_tree(stale)
    work = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.build-", dir=cache_dir.parent))
    try:
        try:
            _build_into(work, digest, start)
        except BaseException:
            # The work dir goes; keep its log where the error message says.
            if (work / "build.log").is_file():
                shutil.copyfile(work / "build.log", _failed_log(cache_dir))
            raise
        work.chmod(0o755)  # mkdtemp made it private; QEMU may run as another user
        # Swap the finished directory in; readers check the stamp, never a half-built dir.
        old = cache_dir.parent / f".{cache_dir.name}.old-{os.getpid()}"
        if cache_dir.exists():
            cache_dir.rename(old)
        work.rename(cache_dir)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        _log(start, f"done: {cache_dir}")
    finally:
        if work.exists():
            _remove_tree(work)


def _failed_log(cache_dir: Path) -> Path:
    return cache_dir.parent / f"{cache_dir.name}-build-failed.log"


def _build_into(work: Path, digest: str, start: float) -> None:
    log = work / "build.log"
    rootfs = work / "rootfs"
    _ensure_tools(start, log)
    mirror = _mirror()

    _log(start, f"debootstrap {SUITE} from {mirror}")
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            rootfs,
            mirror,
        ],
        log,
    )
    _configure(rootfs, log, start)
    versions = _versions(rootfs, log)
    release = versions.pop("kernel-release")

    _log(start, "cleaning up the root file system")
    # /run and /tmp: leftovers of package scripts; the guest mounts tmpfs on /run anyway.
    for name in (*PRUNE, "run", "tmp"):
        _empty_dir(rootfs / name)
    # Recreate what apt expects to find.
    for name in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)

    shutil.copyfile(rootfs / "boot" / f"vmlinuz-{release}", work / "vmlinuz")
    shutil.copyfile(rootfs / "boot" / f"initrd.img-{release}", work / "initrd")

    _log(start, f"mkfs.ext4 -d ({DISK_SIZE}) and qemu-img convert")
    raw = work / "disk.raw"
    # No loop device, no mount: mke2fs copies the directory tree into the new file system.
    _run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", rootfs, raw, DISK_SIZE], log)
    _remove_tree(rootfs)
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, work / "disk.qcow2"], log)
    raw.unlink()
    # A reminder that it is a shared backing file, not a disk to boot directly.
    (work / "disk.qcow2").chmod(0o444)

    info = {
        "suite": SUITE,
        "mirror": mirror,
        "append": APPEND,
        "root_label": ROOT_LABEL,
        "disk_size": DISK_SIZE,
        "kernel_release": release,
        "versions": versions,
        "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - start, 1),
        "recipe": digest,
    }
    (work / "image.json").write_text(json.dumps(info, indent=2) + "\n")
    # Written last: its presence with the right hash is what marks the image complete.
    (work / STAMP).write_text(digest + "\n")


def _empty_dir(path: Path) -> None:
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _configure(rootfs: Path, log: Path, start: float) -> None:
    _log(start, "configuring the guest")
    # debootstrap in a Docker container leaves /proc as a symlink to the host's /proc.
    for name in ("proc", "sys", "dev", "run", "tmp"):
        path = rootfs / name
        if path.is_symlink():
            path.unlink()
        path.mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)

    for name, (mode, text) in FILES.items():
        path = rootfs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.write_text(text)
        path.chmod(mode)
    # dbus keeps its own copy of the id; point it at the per-boot one.
    dbus_id = rootfs / "var/lib/dbus/machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    ssh_dir = rootfs / "root/.ssh"
    ssh_dir.mkdir(exist_ok=True)
    ssh_dir.chmod(0o700)
    host_keys = sorted((rootfs / "etc/ssh").glob("ssh_host_*_key"))
    if not host_keys:
        raise BuildError("openssh-server made no host keys")

    policy = rootfs / "usr/sbin/policy-rc.d"
    # Nothing run in the chroot may start a daemon on the build host.
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    chroot = ["chroot", str(rootfs)]
    try:
        _run([*chroot, "systemctl", "enable", *ENABLE], log, env=CHROOT_ENV)
        _run([*chroot, "systemctl", "disable", *DISABLE], log, env=CHROOT_ENV)
        _log(start, "update-initramfs")
        with _chroot_mounts(rootfs):
            _run([*chroot, "update-initramfs", "-u", "-k", "all"], log, env=CHROOT_ENV)
    finally:
        policy.unlink(missing_ok=True)


def _versions(rootfs: Path, log: Path) -> dict[str, str]:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(f"expected one kernel in /boot, found {[k.name for k in kernels]}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    packages = [f"linux-image-{release}", "qemu-guest-agent", "openssh-server", "systemd"]
    out = _run(
        [
            "dpkg-query",
            f"--admindir={rootfs / 'var/lib/dpkg'}",
            "--showformat=${Package}\t${Version}\n",
            "--show",
            *packages,
        ],
        log,
    )
    versions = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    return {"kernel-release": release, **versions}


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    image = ensure_image(Path(argv[0]) if argv else DEFAULT_CACHE_DIR)
    print(f"disk:   {image.disk}")
    print(f"kernel: {image.kernel}")
    print(f"initrd: {image.initrd}")
    print(f"append: {image.append}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
