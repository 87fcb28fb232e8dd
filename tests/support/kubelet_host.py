"""Test support: what a test kubelet changes on the host outside its work directory, and undoing it.

Several kubelets (this session's nodes, and other sessions on the same machine) can share a host:

* Pods go under a cgroup root of their own (``/modelcar-kubelet-<pid>-<node>`` in every cgroup v1
  hierarchy): kubelet removes pod cgroups it does not know, so two kubelets must never share
  ``/kubepods``. ``cgroup_root`` creates it (kubelet refuses a root that does not exist) and
  removes it, deepest first, once the container processes are gone; the pid in the name lets a
  later run remove what a killed one left.
* kubelet sets a few kernel tunables at start (``protectKernelDefaults: false``, the default).
  ``kernel_tunables_restored`` puts the host's values back afterwards, also after a killed run.
* kubelet links container logs into the fixed ``/var/log/containers`` and mounts volumes (and its
  root directory onto itself) under its root directory; ``remove_host_leftovers`` removes the
  links into its pod logs and the mounts.

kubelet's state (root directory, certificates, pod logs) goes in a short-named directory in the
temp dir, ``kubelet_state_dir``, removed after the node. A run that was killed leaves all of the
above behind; the state directories carry the pid of the test process, like the cgroup roots, so
``reap_dead_runs`` can remove what belongs to processes that no longer exist and nothing of a run
still going.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.support.mounts import mount_points, mounts_under, unmount_under

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
TUNABLES_RECORD = Path(tempfile.gettempdir()) / "modelcar-kernel-tunables.json"
CGROUP_REMOVE_TIMEOUT_SECONDS = 30.0
_CGROUP_ROOT = re.compile(r"modelcar-kubelet-(\d+)-")
_STATE_DIR = re.compile(r"/modelcar-kubelet-(\d+)-[^/]+")


def _dead(pid: str) -> bool:
    return not Path(f"/proc/{pid}").exists()


@contextmanager
def kubelet_state_dir() -> Iterator[Path]:
    """A short-named directory in the temp dir, named for this process; removed on exit.

    Left in place if something is still mounted under it (``reap_dead_runs`` retries later).
    """
    path = Path(tempfile.mkdtemp(prefix=f"modelcar-kubelet-{os.getpid()}-"))
    try:
        yield path
    finally:
        if not mounts_under(path):
            shutil.rmtree(path, ignore_errors=True)


def reap_dead_runs() -> None:
    """Remove the mounts, log links, state and (empty) cgroup roots of kubelets of dead runs."""
    stale = {point[: m.end()] for point in mount_points() if (m := _STATE_DIR.search(point)) and _dead(m[1])}
    for state in stale:
        with suppress(AssertionError):  # still busy: a later run tries again
            unmount_under(Path(state))
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            with suppress(OSError):
                if (m := _STATE_DIR.search(os.readlink(link))) and _dead(m[1]):
                    link.unlink()
    for state_dir in Path(tempfile.gettempdir()).glob("modelcar-kubelet-*"):
        if (m := _STATE_DIR.search(f"/{state_dir.name}")) and _dead(m[1]) and not mounts_under(state_dir):
            shutil.rmtree(state_dir, ignore_errors=True)
    for hierarchy in _hierarchies("cgroup", "cgroup2"):
        for top in hierarchy.glob("modelcar-kubelet-*"):
            if (m := _CGROUP_ROOT.match(top.name)) and _dead(m[1]):
                _remove_cgroup_tree(top.name)


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


@contextmanager
def cgroup_root(node_name: str) -> Iterator[str]:
    """A cgroup root for one kubelet's pods in every v1 hierarchy; removed when the block exits."""
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


def _original_tunables() -> dict[str, str]:
    """The host's values from before any test kubelet ran.

    Those recorded by a run still going (or killed), else the current ones, recorded for the next.
    """
    with suppress(OSError, ValueError):
        recorded: dict[str, str] = json.loads(TUNABLES_RECORD.read_text())
        return recorded
    values = {}
    for name in KERNEL_TUNABLES:
        with suppress(OSError):
            values[name] = (Path("/proc/sys") / name).read_text()
    with suppress(OSError):
        TUNABLES_RECORD.write_text(json.dumps(values))
    return values


@contextmanager
def kernel_tunables_restored() -> Iterator[None]:
    """Put back the kernel tunables kubelet changes, as they were before any test kubelet.

    The values are also recorded in a file, so that the run after one that was killed restores
    the host's values and not the ones kubelet set.
    """
    original = _original_tunables()
    try:
        yield
    finally:
        for name, value in original.items():
            path = Path("/proc/sys") / name
            with suppress(OSError):
                if path.read_text() != value:
                    path.write_text(value)
        with suppress(OSError):
            TUNABLES_RECORD.unlink()


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
