"""Test support: a real kubelet, registered as a node and running pods through a private containerd.

``kubelet_configuration`` is a pure builder of the ``KubeletConfiguration`` a test node runs with;
``docs/test-cluster.md`` says why each field is there. ``start_kubelet`` runs the binary from the
envtest-style assets directory with its root, certificates, pod logs and volume plugins under a
work directory, serving on loopback ports picked free.

What kubelet changes on the host beyond its work directory is the business of
``tests.support.kubelet_host``: the caller gives ``start_kubelet`` a cgroup root from there and
calls ``remove_host_leftovers`` once the runtime has removed the pods.
"""

from __future__ import annotations

import functools
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.apiserver import ControlPlaneError, Daemon
from tests.support.registry import free_port

ROOT_DIR_MAX = 70  # + "/pod-resources/" + 10 digits must fit sockaddr_un.sun_path (108 bytes)
# "0%" switches a signal off (kubelet ignores 0% and 100% thresholds): a small image filesystem
# filled on purpose must not turn into DiskPressure, a disk-pressure taint and evicted pods.
RELAXED_EVICTION: Mapping[str, str] = {
    "memory.available": "100Mi",
    "nodefs.available": "0%",
    "nodefs.inodesFree": "0%",
    "imagefs.available": "0%",
    "imagefs.inodesFree": "0%",
}


@dataclass(frozen=True)
class Taint:
    """A node taint as ``registerWithTaints`` and ``kubectl taint`` spell it."""

    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def as_dict(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "effect": self.effect}

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}"


@dataclass(frozen=True)
class KubeletOptions:
    """What a test may choose about its node; the defaults are kubelet's, except eviction.

    ``config_overrides`` are merged over the generated ``KubeletConfiguration`` last, for a field
    this class does not name. A zero ``image_minimum_gc_age`` is refused: kubelet's defaulting
    takes zero for unset and runs with 2m.
    """

    image_gc_high_threshold_percent: int = 85
    image_gc_low_threshold_percent: int = 80
    image_minimum_gc_age: str = "2m"
    eviction_hard: Mapping[str, str] = field(default_factory=lambda: dict(RELAXED_EVICTION))
    eviction_pressure_transition_period: str = "5s"
    register_with_taints: Sequence[Taint] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    config_overrides: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_minimum_gc_age.strip("0smh") == "":
            raise ValueError("imageMinimumGCAge 0 means the 2m default to kubelet; use e.g. '1s'")


@dataclass(frozen=True)
class KubeletPaths:
    """Where one kubelet keeps its files: config and log in ``workdir``, its state in ``state_dir``.

    kubelet binds unix sockets deep under its root directory (``pod-resources/<10 digits>``), and
    ``sun_path`` holds 108 bytes: the state directory needs a short path, which a test's temp
    directory may not have.
    """

    workdir: Path
    state_dir: Path

    @property
    def root_dir(self) -> Path:
        return self.state_dir / "root"

    @property
    def cert_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def pod_logs_dir(self) -> Path:
        return self.state_dir / "pod-logs"

    @property
    def volume_plugin_dir(self) -> Path:
        return self.state_dir / "volume-plugins"

    @property
    def config(self) -> Path:
        return self.workdir / "kubelet-config.json"

    @property
    def log(self) -> Path:
        return self.workdir / "kubelet.log"


def kubelet_configuration(
    options: KubeletOptions,
    *,
    paths: KubeletPaths,
    runtime_endpoint: str,
    client_ca_file: Path,
    cgroup_root: str,
    port: int,
    healthz_port: int,
) -> dict[str, object]:
    """The ``KubeletConfiguration`` (v1beta1) of a test node; see docs/test-cluster.md."""
    config: dict[str, object] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": runtime_endpoint,
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failSwapOn": False,
        "makeIPTablesUtilChains": False,
        "podLogsDir": str(paths.pod_logs_dir),
        "volumePluginDir": str(paths.volume_plugin_dir),
        "imageGCHighThresholdPercent": options.image_gc_high_threshold_percent,
        "imageGCLowThresholdPercent": options.image_gc_low_threshold_percent,
        "imageMinimumGCAge": options.image_minimum_gc_age,
        "evictionHard": dict(options.eviction_hard),
        "evictionPressureTransitionPeriod": options.eviction_pressure_transition_period,
        "registerWithTaints": [t.as_dict() for t in options.register_with_taints],
        "nodeStatusUpdateFrequency": "2s",
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "5s",
    }
    return {**config, **options.config_overrides}


def kubelet_argv(
    binary: Path, *, paths: KubeletPaths, node_name: str, kubeconfig: Path, labels: Mapping[str, str]
) -> list[str]:
    """The command line; everything that has a config field is in the config file instead."""
    argv = [
        str(binary),
        f"--config={paths.config}",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node_name}",
        f"--root-dir={paths.root_dir}",
        f"--cert-dir={paths.cert_dir}",
        "--v=2",
    ]
    if labels:
        argv.append("--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
    return argv


# --- the daemon ------------------------------------------------------------------------------


@dataclass
class Kubelet:
    """A running kubelet; ``restart()`` stops and starts it with the same node and config."""

    node_name: str
    paths: KubeletPaths
    port: int
    healthz_port: int
    daemon: Daemon = field(repr=False)

    def healthy(self) -> bool:
        """True when ``/healthz`` answers ``ok``."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.healthz_port}/healthz", timeout=2) as answer:
                return bool(answer.read() == b"ok")
        except (urllib.error.URLError, OSError):
            return False

    def configz(self, client_cert: tuple[Path, Path]) -> dict[str, Any]:
        """The configuration kubelet runs with (defaults applied), from its ``/configz``."""
        context = ssl.create_default_context(cafile=str(self.paths.cert_dir / "kubelet.crt"))
        context.check_hostname = False  # its self-signed certificate names the node, not 127.0.0.1
        context.load_cert_chain(*client_cert)
        url = f"https://127.0.0.1:{self.port}/configz"
        with urllib.request.urlopen(url, timeout=10, context=context) as answer:
            config: dict[str, Any] = json.loads(answer.read())["kubeletconfig"]
        return config

    def wait_healthy(self) -> None:
        """Block until ``/healthz`` answers, or fail with kubelet's log."""
        self.daemon.wait_until(self.healthy, "a healthy /healthz")

    def restart(self) -> None:
        """Stop kubelet and start it again with the same command line and config."""
        self.daemon.stop()
        self.daemon.start()
        self.wait_healthy()

    def log_tail(self, lines: int = 30) -> str:
        return self.daemon.log_tail(lines)


@contextmanager
def start_kubelet(
    assets: Path,
    paths: KubeletPaths,
    *,
    node_name: str,
    kubeconfig: Path,
    client_ca_file: Path,
    runtime_endpoint: str,
    cgroup_root: str,
    options: KubeletOptions,
) -> Iterator[Kubelet]:
    """Run kubelet for ``node_name`` until the block exits; it answers ``/healthz`` when yielded.

    The caller owns ``cgroup_root`` (``kubelet_host.cgroup_root``) and calls ``remove_host_leftovers`` once
    the runtime has removed the pods.
    """
    if len(str(paths.root_dir)) > ROOT_DIR_MAX:
        raise ControlPlaneError(f"kubelet root dir too long for its unix sockets: {paths.root_dir}")
    for directory in (
        paths.workdir,
        paths.root_dir,
        paths.cert_dir,
        paths.pod_logs_dir,
        paths.volume_plugin_dir,
    ):
        directory.mkdir(parents=True, exist_ok=True)
    argv = kubelet_argv(
        assets / "kubelet", paths=paths, node_name=node_name, kubeconfig=kubeconfig, labels=options.labels
    )
    configure = functools.partial(
        kubelet_configuration,
        options,
        paths=paths,
        runtime_endpoint=runtime_endpoint,
        client_ca_file=client_ca_file,
        cgroup_root=cgroup_root,
    )
    kubelet = _start_on_free_ports(node_name, paths, argv, configure)
    try:
        yield kubelet
    finally:
        kubelet.daemon.stop()


def _start_on_free_ports(
    node_name: str, paths: KubeletPaths, argv: list[str], configure: Callable[..., dict[str, object]]
) -> Kubelet:
    """Another process may take a probed port before kubelet binds it: try fresh ports then."""
    attempts = 3
    for attempt in range(1, attempts + 1):
        port, healthz_port = free_port(), free_port()
        config = configure(port=port, healthz_port=healthz_port)
        paths.config.write_text(json.dumps(config, indent=2))
        kubelet = Kubelet(node_name, paths, port, healthz_port, Daemon("kubelet", argv, paths.log))
        kubelet.daemon.start()
        try:
            kubelet.wait_healthy()
        except ControlPlaneError as err:
            kubelet.daemon.stop()
            if "address already in use" not in str(err) or attempt == attempts:
                raise
        else:
            return kubelet
    raise ControlPlaneError(f"kubelet found no free ports in {attempts} attempts")
