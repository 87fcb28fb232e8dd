"""Test support: filesystems a test mounts, and taking every mount under a directory down again.

kubelet's image GC and eviction act on the usage percent of the image filesystem as ``statfs``
reports it, so a test that wants them to fire needs a real, small filesystem of its own:
``mount_tmpfs``, or ``mount_ext4`` for what real nodes have (block allocation, journal and
reserved clusters included).

``mount_ext4`` makes a sparse file, formats it and mounts it with ``mount -o loop``, which sets the
loop device's autoclear flag: the last unmount detaches it. The file's name carries the pid of the
test process, so ``reap_stale_loop_mounts`` can find and release what a killed run left behind
(mounted loop devices whose process is gone) without touching those of a test running right now.
``unmount_under`` unmounts, deepest first, what containerd and kubelet left mounted in a work
directory (container root filesystems, shm, volumes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = {"mkfs.ext4": "e2fsprogs", "losetup": "mount", "mount": "mount", "umount": "mount"}
_IMAGE_NAME = re.compile(r"modelcar-imagefs-(\d+)\.ext4")
_TIMEOUT_SECONDS = 60


def mount_points() -> list[str]:
    """Every mount point of this mount namespace."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4].replace("\\040", " ") for line in lines]


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest first."""
    prefix = str(directory)
    points = [p for p in mount_points() if p == prefix or p.startswith(prefix + "/")]
    return sorted(points, key=len, reverse=True)


def unmount_under(directory: Path) -> None:
    """Unmount everything at or below ``directory`` (container rootfs, shm, volumes, the root fs)."""
    for point in mounts_under(directory):
        result = subprocess.run(["umount", point], capture_output=True, text=True, check=False, timeout=30)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=30)
    if left := mounts_under(directory):
        raise AssertionError(f"still mounted after teardown: {left}")


def mount_tmpfs(path: Path, size_mb: int) -> None:
    """Mount a ``size_mb`` MiB tmpfs at ``path`` (mode 0711)."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0711", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a {size_mb} MiB tmpfs at {path} (needs root): {result.stderr.strip()}")


@dataclass(frozen=True)
class FsUsage:
    """A filesystem's size as ``statvfs`` (and so kubelet) sees it; ``used`` counts reserved space."""

    capacity_bytes: int
    available_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.capacity_bytes - self.available_bytes

    @property
    def used_percent(self) -> float:
        """kubelet's image GC figure: ``100 - available * 100 / capacity``."""
        return 100.0 - self.available_bytes * 100.0 / self.capacity_bytes


def fs_usage(path: Path) -> FsUsage:
    """The usage of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return FsUsage(capacity_bytes=st.f_blocks * st.f_frsize, available_bytes=st.f_bavail * st.f_frsize)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=_TIMEOUT_SECONDS)


def _loop_devices() -> list[dict[str, str]]:
    """``losetup --list`` as dicts with ``name`` and ``back-file``."""
    result = _run("losetup", "--list", "--json", "--output", "NAME,BACK-FILE")
    if result.returncode != 0 or not result.stdout.strip():
        return []
    devices: list[dict[str, str]] = json.loads(result.stdout)["loopdevices"]
    return devices


def _mount_points_of(device: str) -> list[str]:
    """Where ``device`` is mounted, from ``/proc/self/mountinfo`` (source follows the `` - ``)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split()[1:2] == [device]:
            points.append(before.split()[4].replace("\\040", " "))
    return points


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_loop_mounts() -> list[str]:
    """Unmount and detach image filesystems of test processes that no longer exist."""
    reaped = []
    for device in _loop_devices():
        match = _IMAGE_NAME.search(device.get("back-file") or "")
        if match is None or _pid_alive(int(match.group(1))):
            continue
        for point in _mount_points_of(device["name"]):
            _run("umount", "--lazy", point)
        _run("losetup", "--detach", device["name"])  # already gone when autoclear did it
        reaped.append(device["name"])
    return reaped


def require_binaries() -> None:
    """Fail (never skip) naming the Debian package of a missing binary."""
    for binary, package in BINARIES.items():
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} not found: install the Debian package {package!r}")


def _detach_file(image: Path) -> None:
    """Detach any loop device still backed by ``image`` (autoclear normally did it)."""
    for device in _loop_devices():
        if device.get("back-file", "").removesuffix(" (deleted)") == str(image):
            _run("losetup", "--detach", device["name"])


@contextmanager
def mount_ext4(mountpoint: Path, *, size_mb: int, image_dir: Path) -> Iterator[FsUsage]:
    """Mount a fresh ``size_mb`` MiB ext4 at ``mountpoint``; unmounted and detached on exit.

    The backing file lives in ``image_dir`` (on the host's disk, sparse). Yields the empty
    filesystem's usage: ext4 metadata and reserved clusters make it a few percent above zero.
    """
    require_binaries()
    reap_stale_loop_mounts()
    image = image_dir / f"modelcar-imagefs-{os.getpid()}.ext4"
    with image.open("xb") as handle:
        handle.truncate(size_mb * 1024 * 1024)
    # 4 KiB blocks and one inode per 16 KiB as on a large disk: mke2fs's "small" profile would
    # pick 1 KiB blocks for a few hundred MiB. -m 0: no root-reserved blocks to skew usage.
    made = _run(
        "mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", "-i", "16384", "-E", "nodiscard", str(image)
    )
    if made.returncode != 0:
        pytest.fail(f"mkfs.ext4 {image} failed: {made.stderr.strip()}")
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-t", "ext4", "-o", "loop", str(image), str(mountpoint))
    if mounted.returncode != 0:
        image.unlink()
        pytest.fail(f"cannot loop-mount {image} at {mountpoint} (needs root): {mounted.stderr.strip()}")
    try:
        mountpoint.chmod(0o711)
        yield fs_usage(mountpoint)
    finally:
        if _run("umount", str(mountpoint)).returncode != 0:
            _run("umount", "--lazy", str(mountpoint))
        _detach_file(image)
        with suppress(FileNotFoundError):
            image.unlink()
