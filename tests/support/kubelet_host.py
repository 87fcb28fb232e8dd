"""Test support: what a test kubelet changes on the host outside its work directory, and undoing it.

Several kubelets (this session's nodes, and other sessions on the same machine) can share a host:

* Pods go under a cgroup root of their own (``/modelcar-kubelet-<pid>-<node>`` in every cgroup v1
  hierarchy): kubelet removes pod cgroups it does not know, so two kubelets must never share
  ``/kubepods``. ``cgroup_root`` creates it (kubelet refuses a root that does not exist) and
  removes it, deepest first, once the container processes are gone; the pid in the name lets a
  later run remove what a killed one left.
* kubelet sets a few kernel tunables at start (``protectKernelDefaults: false``, the default).
  ``kernel_tunables_restored`` puts the host's values back afterwards.
* kubelet links container logs into the fixed ``/var/log/containers`` and mounts volumes under its
  root directory; ``remove_host_leftovers`` removes the links into its pod logs and the mounts.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.support.mounts import unmount_under

# kubelet 1.32, container_manager_linux.go setupKernelTunables: the values it writes.
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
CONTAINER_LOG_LINKS = Path("/var/log/containers")
CGROUP_REMOVE_TIMEOUT_SECONDS = 30.0
_CGROUP_ROOT = re.compile(r"modelcar-kubelet-(\d+)-")


def _hierarchies(*types: str) -> list[Path]:
    """Mount points of the cgroup hierarchies of the given filesystem types."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fstype = after.split(" ", 1)[0]
        if fstype in types:
            points.append(Path(before.split()[4]))
    return points


def _remove_cgroup_tree(name: str) -> list[Path]:
    """rmdir ``name`` and its children in every hierarchy, deepest first; what could not go."""
    left = []
    # runc mirrors v1 cgroups into the cgroup2 hierarchy of a hybrid host (/sys/fs/cgroup/unified).
    for hierarchy in _hierarchies("cgroup", "cgroup2"):
        top = hierarchy / name.lstrip("/")
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with suppress(OSError):
                directory.rmdir()
        try:
            top.rmdir()
        except OSError:
            left.append(top)
    return left


def reap_stale_cgroup_roots() -> None:
    """Remove the (empty) cgroup roots of test kubelets whose process is gone."""
    for hierarchy in _hierarchies("cgroup", "cgroup2"):
        for top in hierarchy.glob("modelcar-kubelet-*"):
            match = _CGROUP_ROOT.match(top.name)
            if match is not None and not Path(f"/proc/{match.group(1)}").exists():
                _remove_cgroup_tree(top.name)


@contextmanager
def cgroup_root(node_name: str) -> Iterator[str]:
    """A cgroup root for one kubelet's pods in every v1 hierarchy; removed when the block exits."""
    reap_stale_cgroup_roots()
    name = f"/modelcar-kubelet-{os.getpid()}-{node_name}"
    try:
        for hierarchy in _hierarchies("cgroup"):
            top = hierarchy / name.lstrip("/")
            top.mkdir(exist_ok=True)
            # A new cpuset cgroup starts with no CPUs and no memory nodes; nothing could run in it.
            for key in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / key).exists():
                    (top / key).write_text((hierarchy / key).read_text())
        yield name
    finally:
        deadline = time.monotonic() + CGROUP_REMOVE_TIMEOUT_SECONDS
        while (left := _remove_cgroup_tree(name)) and time.monotonic() < deadline:
            time.sleep(0.2)  # container processes are still exiting after the shims were killed
        if left:
            raise AssertionError(f"cgroups of {node_name} still busy after teardown: {left}")


@contextmanager
def kernel_tunables_restored() -> Iterator[None]:
    """Put back the kernel tunables kubelet changes, as they were when the block began."""
    saved = {}
    for name in KERNEL_TUNABLES:
        with suppress(OSError):
            saved[name] = (Path("/proc/sys") / name).read_text()
    try:
        yield
    finally:
        for name, value in saved.items():
            path = Path("/proc/sys") / name
            with suppress(OSError):
                if path.read_text() != value:
                    path.write_text(value)


def _remove_log_links(target_prefix: Path) -> None:
    """Remove ``/var/log/containers`` links kubelet made into ``target_prefix``."""
    if not CONTAINER_LOG_LINKS.is_dir():
        return
    for link in CONTAINER_LOG_LINKS.iterdir():
        with suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(f"{target_prefix}/"):
                link.unlink()


def remove_host_leftovers(*, root_dir: Path, pod_logs_dir: Path) -> None:
    """After kubelet and its pods are gone: unmount its volumes, remove its log links."""
    unmount_under(root_dir)
    _remove_log_links(pod_logs_dir)
