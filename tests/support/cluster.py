"""Test support: a real single-host Kubernetes cluster, with nodes that run pods through kubelet.

The session fixture ``cluster`` is a control plane of its own: etcd and kube-apiserver (the same
code as ``apiserver``), kube-controller-manager and kube-scheduler, on loopback ports. It is
deliberately not the shared ``apiserver``: there, other tests create Nodes and Pods through the
API alone, and a node lifecycle controller would taint those nodes NotReady while a scheduler
would bind their pods to a real kubelet.

``node_cluster_factory(...)`` adds a node: a containerd whose image store is a loop-mounted ext4 of
``image_fs_mb`` MiB, and a kubelet registered as ``system:node:<name>`` with the image GC,
eviction, taint and label settings given (``tests.support.kubelet``). ``node_cluster`` is one such
node with the defaults, shared by a test module. Pods must use ``hostNetwork: true`` (no CNI).
Every wait fails with the tail of each daemon's log. ``docs/test-cluster.md`` lists the flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.apiserver import (
    ASSETS_SCRIPT,
    ApiServer,
    ControlPlaneError,
    Daemon,
    resolve_assets_dir,
    start_control_plane,
)
from tests.support.kubelet import KubeletOptions
from tests.support.kubelet_host import kernel_tunables_restored
from tests.support.node import NodeCluster, start_node
from tests.support.oci import push_sandbox_image
from tests.support.polling import eventually
from tests.support.registry import RunningRegistry, free_port

ROOT_CA = "kube-root-ca.crt"
CONTROLLER_BINARIES = ("kube-controller-manager", "kube-scheduler", "kubelet")


# --- control plane ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """kube-apiserver with kube-controller-manager and kube-scheduler running against it."""

    apiserver: ApiServer
    controller_manager: Daemon
    scheduler: Daemon

    def daemons(self) -> list[Daemon]:
        return [self.apiserver.daemon, self.controller_manager, self.scheduler]

    def create_namespace(self, name: str) -> None:
        """Create a namespace; wait for its ``default`` ServiceAccount and ``kube-root-ca.crt``.

        The controllers add both (the ServiceAccount admission plugin needs the first before any
        Pod); ``ApiServer.create_namespace`` creates them itself and would race them here.
        """
        self.apiserver.kubectl("create", "namespace", name)

        def populated() -> bool:
            try:
                self.apiserver.kubectl("get", "-n", name, "serviceaccount/default", f"configmap/{ROOT_CA}")
            except ControlPlaneError:
                return False
            return True

        eventually(populated, timeout_seconds=30, what=f"namespace {name} populated by its controllers")


def _require_binaries(assets: Path) -> None:
    """Fail (never skip) when a binary the cluster needs is not in the assets directory."""
    missing = [b for b in CONTROLLER_BINARIES if not os.access(assets / b, os.X_OK)]
    if missing:
        pytest.fail(
            f"Kubernetes test binaries {', '.join(missing)} are missing from {assets}; "
            f"build them with: {ASSETS_SCRIPT}",
            pytrace=False,
        )


def _secure_healthz(port: int, ca_file: Path) -> Callable[[], bool]:
    context = ssl.create_default_context(cafile=str(ca_file))

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2, context=context) as r:
                return bool(r.read() == b"ok")
        except (urllib.error.URLError, OSError):
            return False

    return healthy


def _start_controller(apiserver: ApiServer, name: str, kubeconfig: Path, extra: Sequence[str]) -> Daemon:
    """Start ``kube-controller-manager`` or ``kube-scheduler``; return it once ``/healthz`` is ok."""
    crt, key = apiserver.pki.issue(f"{name}-serving", common_name=name, server=True, sans=["127.0.0.1"])
    attempts = 3
    for attempt in range(1, attempts + 1):
        port = free_port()
        argv = [
            str(apiserver.assets_dir / name),
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={crt}",
            f"--tls-private-key-file={key}",
            "--profiling=false",
            *extra,
        ]
        daemon = Daemon(name, argv, apiserver.workdir / f"{name}.log")
        daemon.start()
        try:
            daemon.wait_until(_secure_healthz(port, apiserver.ca_file), "a healthy /healthz")
        except ControlPlaneError as err:
            daemon.stop()
            if "address already in use" not in str(err) or attempt == attempts:
                raise
        else:
            return daemon
    raise ControlPlaneError(f"{name} found no free port in {attempts} attempts")


@contextlib.contextmanager
def start_cluster(workdir: Path) -> Iterator[Cluster]:
    """A control plane with controllers and a scheduler under ``workdir``; stopped on exit."""
    _require_binaries(resolve_assets_dir())
    with contextlib.ExitStack() as stack:
        stack.enter_context(kernel_tunables_restored())
        apiserver = stack.enter_context(start_control_plane(workdir))
        kubeconfig = apiserver.write_kubeconfig("system:kube-controller-manager")
        manager = _start_controller(
            apiserver,
            "kube-controller-manager",
            kubeconfig,
            [
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={apiserver.pki.directory / 'sa.key'}",
                f"--root-ca-file={apiserver.ca_file}",
            ],
        )
        stack.callback(manager.stop)
        kubeconfig = apiserver.write_kubeconfig("system:kube-scheduler")
        config = workdir / "kube-scheduler.json"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(kubeconfig)},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        scheduler = _start_controller(apiserver, "kube-scheduler", kubeconfig, [f"--config={config}"])
        stack.callback(scheduler.stop)
        yield Cluster(apiserver=apiserver, controller_manager=manager, scheduler=scheduler)


# --- fixtures --------------------------------------------------------------------------------

NodeClusterFactory = Callable[..., NodeCluster]
DEFAULT_IMAGE_FS_MB = 300


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A session-wide control plane of its own with kube-controller-manager and kube-scheduler."""
    with start_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture
def node_cluster_factory(
    cluster: Cluster, registry: RunningRegistry, tmp_path: Path
) -> Iterator[NodeClusterFactory]:
    """Add Ready nodes to ``cluster`` for this test: ``factory(options, *, image_fs_mb=300)``."""
    sandbox = push_sandbox_image(registry)
    with contextlib.ExitStack() as stack:
        count = 0

        def factory(
            options: KubeletOptions | None = None, *, image_fs_mb: int = DEFAULT_IMAGE_FS_MB
        ) -> NodeCluster:
            nonlocal count
            count += 1
            return stack.enter_context(
                start_node(
                    cluster,
                    tmp_path / f"n{count}",
                    registry_host=registry.host,
                    sandbox_image=sandbox.tag_ref,
                    image_fs_mb=image_fs_mb,
                    options=options or KubeletOptions(),
                )
            )

        yield factory


@pytest.fixture(scope="module")
def node_cluster(
    cluster: Cluster, registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeCluster]:
    """One Ready node with the default options, shared by the tests of a module."""
    sandbox = push_sandbox_image(registry)
    with start_node(
        cluster,
        tmp_path_factory.mktemp("node"),
        registry_host=registry.host,
        sandbox_image=sandbox.tag_ref,
        image_fs_mb=DEFAULT_IMAGE_FS_MB,
        options=KubeletOptions(),
    ) as node:
        yield node
