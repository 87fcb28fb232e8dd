"""Test support: a private containerd (CRI ``runtime.v1``) per test session or per test.

``start_containerd`` runs the Debian ``containerd`` with its own root, state, socket and config in
a work directory, next to any other containerd on the machine. Its CRI plugin pulls from the test
registry over plain HTTP (a ``hosts.toml`` under ``config_path``; the older ``mirrors`` table is
deprecated), uses the test registry's sandbox image (``registry.k8s.io`` is unreachable), the
overlayfs snapshotter, and ``restrict_oom_score_adj`` (without it ``RunPodSandbox`` fails on these
machines with ``can't get final child's PID from pipe: EOF``), and runc with cgroupfs (the
driver a test kubelet uses). With ``root_size_mb`` the root is a fixed-size tmpfs, with
``ext4_size_mb`` a loop-mounted ext4 (``tests.support.mounts``): a real filesystem a test can fill.
``cni_placeholder`` gives CRI a network configuration whose plugin does not exist: CRI then reports
``NetworkReady`` (kubelet will not call a node Ready otherwise) while only host-network pods run.

Teardown removes every pod through CRI (so shims and containers exit), stops the daemon's process
group, kills any shim it left behind (by pid, only shims of this socket), unmounts what is still
mounted under the work directory and the tmpfs or ext4 root (detaching its loop device).
Fixtures: ``containerd`` (session) and ``containerd_factory`` (per test, for instances of their own).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from prefetcher.adapters.cri import CriImageRuntime
from prefetcher.adapters.cri_api import api_pb2 as cri
from prefetcher.adapters.cri_api import api_pb2_grpc as cri_grpc
from tests.support.mounts import FsUsage, fs_usage, mount_ext4, mount_tmpfs, unmount_under
from tests.support.oci import push_sandbox_image
from tests.support.pods import CriPods
from tests.support.polling import eventually
from tests.support.registry import RunningRegistry

STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
BINARIES = {"containerd": "containerd", "runc": "runc", "mount": "mount", "umount": "mount"}
_SOCKET_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes; keep a margin


def require_binaries() -> None:
    """Fail (never skip) naming the Debian package of a missing binary."""
    for binary, package in BINARIES.items():
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} not found: install the Debian package {package!r}")


def render_config(
    workdir: Path, *, registry_host: str, sandbox_image: str, cni_dir: Path | None = None
) -> str:
    """The containerd config (version 2) of a private instance under ``workdir``."""
    cni = ""
    if cni_dir is not None:
        cni = f"""  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_dir / "bin"}"
    conf_dir = "{cni_dir / "net.d"}"
"""
    return f"""version = 2
root = "{workdir / "root"}"
state = "{workdir / "state"}"

[grpc]
  address = "{workdir / "containerd.sock"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{workdir / "certs.d"}"
{cni}"""


def _write_cni_placeholder(cni_dir: Path) -> None:
    """A network list naming a plugin that does not exist: loads, so CRI reports NetworkReady.

    containerd's CRI plugin skips CNI for host-network sandboxes; any other pod fails to start
    with "failed to find plugin", which is the intended loud failure (no pod network here).
    """
    (cni_dir / "bin").mkdir(parents=True, exist_ok=True)
    (cni_dir / "net.d").mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "0.4.0",
        "name": "host-network-only",
        "plugins": [{"type": "modelcar-test-no-pod-network"}],
    }
    (cni_dir / "net.d" / "10-host-network-only.conflist").write_text(json.dumps(conflist))


def hosts_toml(registry_host: str, *, mirror: str | None = None) -> str:
    """``hosts.toml`` of ``registry_host`` (plain HTTP); with ``mirror``, pulls try that host first.

    containerd 1.6 reads ``certs.d/<host>/hosts.toml`` at each pull when the CRI registry's
    ``config_path`` is set; ``[host."…"]`` entries are tried in order, then ``server`` (the
    registry itself) when every host failed. The deprecated ``registry.mirrors`` table of
    ``config.toml`` is the older form of the same, read at start-up only.
    """
    first = mirror or registry_host
    return (
        f'server = "http://{registry_host}"\n\n'
        f'[host."http://{first}"]\n  capabilities = ["pull", "resolve"]\n'
    )


def _write_hosts(workdir: Path, registry_host: str, *, mirror: str | None = None) -> None:
    """``certs.d/<host>/hosts.toml``: pull and resolve from ``registry_host`` (or ``mirror``) over HTTP."""
    host_dir = workdir / "certs.d" / registry_host
    host_dir.mkdir(parents=True, exist_ok=True)
    (host_dir / "hosts.toml").write_text(hosts_toml(registry_host, mirror=mirror))


@dataclass
class RunningContainerd:
    """A private containerd; ``stop()``/``start()`` take it down and bring it back."""

    workdir: Path
    root: Path
    state: Path
    socket: Path
    config: Path
    log_file: Path
    root_size_mb: int | None = None
    ext4_size_mb: int | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """The CRI endpoint, ``unix://<socket>``."""
        return f"unix://{self.socket}"

    @property
    def running(self) -> bool:
        """True while the daemon process is alive."""
        return self._process is not None and self._process.poll() is None

    def image_fs_usage(self) -> FsUsage:
        """``statvfs`` of the image filesystem (the root), as kubelet's image GC measures it."""
        return fs_usage(self.root)

    def image_refs(self) -> set[str]:
        """Every name of every image in the store, as the agent sees them (CRI ListImages)."""
        with CriImageRuntime(self.endpoint) as runtime:
            return {r for image in runtime.list_images() for r in image.refs}

    def trust_registry(self, host: str, *, mirror: str | None = None) -> None:
        """Pull from ``host`` over plain HTTP too, through ``mirror`` first if given (read at each pull)."""
        _write_hosts(self.workdir, host, mirror=mirror)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the daemon's log, for failure messages."""
        with suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self) -> None:
        """Start the daemon and wait until CRI ``Version`` answers."""
        if self.running:
            return
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                ["containerd", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            eventually(
                self._ready, timeout_seconds=STARTUP_TIMEOUT_SECONDS, what=f"containerd on {self.socket}"
            )
        except AssertionError as err:
            self.stop(kill=True)
            raise AssertionError(f"{err}\ncontainerd log:\n{self.log_tail()}") from err

    def stop(self, *, kill: bool = False) -> None:
        """Stop the daemon alone (containers keep running, as with systemd's KillMode=process).

        SIGTERM makes containerd remove its socket ("missing"); ``kill`` (SIGKILL) leaves a stale
        socket file behind that refuses connections ("refused").
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def _ready(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            raise AssertionError(f"containerd exited with {self._process and self._process.returncode}")
        if not self.socket.is_socket():
            return False
        with grpc.insecure_channel(self.endpoint) as channel:
            cri_grpc.RuntimeServiceStub(channel).Version(cri.VersionRequest(), timeout=2)
        return True

    def teardown(self) -> None:
        """Remove pods, stop the daemon's process group and reap what it left behind."""
        if self.running:
            with suppress(grpc.RpcError), CriPods(self.endpoint, log_root=self.workdir / "pods") as pods:
                pods.remove_all()
        process = self._process
        if process is not None and process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        self.stop()
        _kill_shims(self.socket)
        unmount_under(self.workdir)


def _kill_shims(socket: Path) -> None:
    """Kill, by pid, the runc shims serving this containerd (they outlive it by design)."""
    marker = f"-address {socket}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"containerd-shim" in cmdline and marker in cmdline:
                os.kill(int(entry.name), signal.SIGKILL)


@contextmanager
def start_containerd(
    workdir: Path,
    *,
    registry_host: str,
    sandbox_image: str,
    root_size_mb: int | None = None,
    ext4_size_mb: int | None = None,
    cni_placeholder: bool = False,
) -> Iterator[RunningContainerd]:
    """Run a private containerd under ``workdir``; torn down when the block exits.

    The root is a tmpfs of ``root_size_mb`` MiB or an ext4 of ``ext4_size_mb`` MiB (at most one),
    else a plain directory.
    """
    require_binaries()
    if root_size_mb is not None and ext4_size_mb is not None:
        raise ValueError("root_size_mb (tmpfs) and ext4_size_mb (ext4) are alternatives")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    socket = workdir / "containerd.sock"
    if len(str(socket)) > _SOCKET_PATH_MAX:
        pytest.fail(f"socket path too long for AF_UNIX ({len(str(socket))} bytes): {socket}")
    daemon = RunningContainerd(
        workdir=workdir,
        root=workdir / "root",
        state=workdir / "state",
        socket=socket,
        config=workdir / "config.toml",
        log_file=workdir / "containerd.log",
        root_size_mb=root_size_mb,
        ext4_size_mb=ext4_size_mb,
    )
    cni_dir = workdir / "cni" if cni_placeholder else None
    daemon.config.write_text(
        render_config(workdir, registry_host=registry_host, sandbox_image=sandbox_image, cni_dir=cni_dir)
    )
    _write_hosts(workdir, registry_host)
    if cni_dir is not None:
        _write_cni_placeholder(cni_dir)
    with ExitStack() as cleanup:
        cleanup.callback(unmount_under, workdir)
        if root_size_mb is not None:
            mount_tmpfs(daemon.root, root_size_mb)
        if ext4_size_mb is not None:
            cleanup.enter_context(mount_ext4(daemon.root, size_mb=ext4_size_mb, image_dir=workdir))
        cleanup.callback(daemon.teardown)
        daemon.start()
        yield daemon


ContainerdFactory = Callable[..., RunningContainerd]


@pytest.fixture(scope="session")
def containerd(
    tmp_path_factory: pytest.TempPathFactory, registry: RunningRegistry
) -> Iterator[RunningContainerd]:
    """A session-wide containerd pulling from the session ``registry``."""
    sandbox = push_sandbox_image(registry)
    with start_containerd(
        tmp_path_factory.mktemp("containerd"), registry_host=registry.host, sandbox_image=sandbox.tag_ref
    ) as daemon:
        yield daemon


@pytest.fixture
def containerd_factory(tmp_path: Path, registry: RunningRegistry) -> Iterator[ContainerdFactory]:
    """Start containerds of a test's own (``root_size_mb=`` tmpfs or ``ext4_size_mb=`` ext4 root)."""
    sandbox = push_sandbox_image(registry)
    with ExitStack() as stack:
        count = 0

        def factory(
            *, root_size_mb: int | None = None, ext4_size_mb: int | None = None, cni_placeholder: bool = False
        ) -> RunningContainerd:
            nonlocal count
            count += 1
            return stack.enter_context(
                start_containerd(
                    tmp_path / f"containerd{count}",
                    registry_host=registry.host,
                    sandbox_image=sandbox.tag_ref,
                    root_size_mb=root_size_mb,
                    ext4_size_mb=ext4_size_mb,
                    cni_placeholder=cni_placeholder,
                )
            )

        yield factory
