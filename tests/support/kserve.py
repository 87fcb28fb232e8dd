"""Test support: KServe's own controller manager and webhooks against a test control plane.

Nothing here stands in for KServe. ``hack/kserve-assets.sh`` builds KServe's ``cmd/manager`` at a
pinned release and copies, from the same module version, its CRDs, its ``inferenceservice-config``
ConfigMap and its webhook configurations. ``start_kserve`` installs those as shipped, with the
changes a cluster without Knative, Istio or in-cluster Services needs, and only those:

* ``deploy.defaultDeploymentMode``: ``Standard`` (plain Deployments; Knative is not installed);
* ``ingress.disableIngressCreation``: ``true`` (no Istio, no ingress controller);
* each webhook's ``clientConfig``: the manager's webhook port on loopback with the test CA's
  ``caBundle`` in place of a Service (the API server here has no route to a Service).

The manager runs as the cluster admin (KServe's RBAC is KServe's concern, not this project's), with
``POD_NAMESPACE=kserve`` and its serving certificate where controller-runtime looks for it
(``$TMPDIR/k8s-webhook-server/serving-certs``). ``KServe.storage_initializer`` edits the
ConfigMap's ``storageInitializer`` document, which KServe reads on every pod admission.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.apiserver import ApiServer, ControlPlaneError, Daemon
from tests.support.polling import eventually
from tests.support.registry import free_port

REPO = Path(__file__).resolve().parents[2]
KSERVE_SCRIPT = REPO / "hack" / "kserve-assets.sh"
KSERVE_NAMESPACE = "kserve"
CONFIGMAP = "inferenceservice-config"
# The CRDs KServe's manager looks up at start-up or while reconciling (config/crd/full and the
# clusterstoragecontainer and localmodel subfolders; the llmisvc ones belong to another controller).
CRD_FILES = (
    "serving.kserve.io_inferenceservices.yaml",
    "serving.kserve.io_servingruntimes.yaml",
    "serving.kserve.io_clusterservingruntimes.yaml",
    "serving.kserve.io_inferencegraphs.yaml",
    "serving.kserve.io_trainedmodels.yaml",
    "clusterstoragecontainer/serving.kserve.io_clusterstoragecontainers.yaml",
    "localmodel/serving.kserve.io_localmodelcaches.yaml",
    "localmodel/serving.kserve.io_localmodelnamespacecaches.yaml",
    "localmodel/serving.kserve.io_localmodelnodegroups.yaml",
    "localmodel/serving.kserve.io_localmodelnodes.yaml",
)
START_TIMEOUT_SECONDS = 120.0


def resolve_kserve_assets() -> Path:
    """The directory ``hack/kserve-assets.sh`` builds; fail (never skip) when it is incomplete."""
    printed = subprocess.run([str(KSERVE_SCRIPT), "--print-dir"], capture_output=True, text=True, check=True)
    assets = Path(printed.stdout.strip())
    missing = [
        p for p in ("manager", *(f"config/crd/full/{f}" for f in CRD_FILES)) if not (assets / p).exists()
    ]
    if missing:
        pytest.fail(
            f"KServe assets {', '.join(missing)} are missing from {assets}; build them with: {KSERVE_SCRIPT}",
            pytrace=False,
        )
    return assets


def crd_paths(assets: Path) -> list[Path]:
    return [assets / "config" / "crd" / "full" / name for name in CRD_FILES]


def wait_established(apiserver: ApiServer, names: list[str]) -> None:
    """Poll until every CRD in ``names`` is Established.

    ``kubectl wait`` fails outright, rather than waiting, on a CRD the API server has not yet given
    any status condition (just after a server-side apply).
    """

    def established() -> bool:
        for name in names:
            crd = json.loads(apiserver.kubectl("get", "crd", name, "-o", "json"))
            conditions = crd.get("status", {}).get("conditions") or []
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
        return True

    eventually(
        established, timeout_seconds=START_TIMEOUT_SECONDS, what=f"CRDs {', '.join(names)} Established"
    )


def install_crds(apiserver: ApiServer, assets: Path) -> None:
    """Apply KServe's CRDs server-side (the InferenceService CRD is too large for client-side apply)."""
    names = []
    for path in crd_paths(assets):
        apiserver.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        names.append(yaml.safe_load(path.read_text())["metadata"]["name"])
    wait_established(apiserver, names)


def install_isvc_crd(apiserver: ApiServer) -> str:
    """Install KServe's own InferenceService CRD, wait until it is Established; return its name."""
    path = resolve_kserve_assets() / "config" / "crd" / "full" / CRD_FILES[0]
    name = str(yaml.safe_load(path.read_text())["metadata"]["name"])
    apiserver.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    wait_established(apiserver, [name])
    return name


def shipped_configmap(assets: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(
        (assets / "config" / "configmap" / "inferenceservice.yaml").read_text()
    )
    return config


def standard_mode_configmap(assets: Path) -> dict[str, Any]:
    """KServe's shipped ConfigMap in Standard mode with ingress creation off, nothing else changed."""
    config = shipped_configmap(assets)
    data = config["data"]
    deploy = json.loads(data["deploy"])
    deploy["defaultDeploymentMode"] = "Standard"
    ingress = json.loads(data["ingress"])
    ingress["disableIngressCreation"] = True
    data["deploy"], data["ingress"] = json.dumps(deploy), json.dumps(ingress)
    return config


def webhook_configurations(assets: Path, *, port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """KServe's webhook configurations, each entry sent to ``https://127.0.0.1:port<path>``."""
    text = (assets / "config" / "webhook" / "manifests.yaml").read_text()
    configs = [doc for doc in yaml.safe_load_all(text) if doc]
    bundle = base64.b64encode(ca_pem).decode()
    for config in configs:
        for entry in config["webhooks"]:
            path = entry["clientConfig"]["service"]["path"]
            entry["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}
    return configs


@dataclass(frozen=True)
class KServe:
    """KServe's controller manager and webhooks serving ``apiserver``."""

    apiserver: ApiServer
    daemon: Daemon
    webhook_port: int
    assets: Path

    def storage_initializer(self) -> dict[str, Any]:
        """The ``storageInitializer`` document of the live ConfigMap."""
        config = self.apiserver.kubectl("get", "configmap", CONFIGMAP, "-n", KSERVE_NAMESPACE, "-o", "json")
        settings: dict[str, Any] = json.loads(json.loads(config)["data"]["storageInitializer"])
        return settings

    def set_storage_initializer(self, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into the ``storageInitializer`` document (read on every admission)."""
        document = json.dumps({**self.storage_initializer(), **changes})
        patch = {"data": {"storageInitializer": document}}
        self.apiserver.kubectl(
            "patch", "configmap", CONFIGMAP, "-n", KSERVE_NAMESPACE, "--type=merge", "-p", json.dumps(patch)
        )

    def log_tail(self, lines: int = 40) -> str:
        return self.daemon.log_tail(lines)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _start_manager(apiserver: ApiServer, assets: Path, workdir: Path) -> tuple[Daemon, int]:
    """KServe's manager on free loopback ports, once its webhook server answers ``/readyz``."""
    certs = workdir / "tmp" / "k8s-webhook-server" / "serving-certs"
    certs.mkdir(parents=True, exist_ok=True)
    crt, key = apiserver.pki.issue(
        "kserve-webhook", common_name="kserve-webhook", server=True, sans=["127.0.0.1"]
    )
    shutil.copyfile(crt, certs / "tls.crt")
    shutil.copyfile(key, certs / "tls.key")
    attempts = 3
    for attempt in range(1, attempts + 1):
        webhook, metrics, probe = free_port(), free_port(), free_port()
        argv = [
            "env",
            f"KUBECONFIG={apiserver.kubeconfig}",
            f"POD_NAMESPACE={KSERVE_NAMESPACE}",
            f"TMPDIR={workdir / 'tmp'}",
            str(assets / "manager"),
            f"-webhook-port={webhook}",
            f"-metrics-addr=127.0.0.1:{metrics}",
            f"-health-probe-addr=127.0.0.1:{probe}",
            "-leader-elect=false",
        ]
        daemon = Daemon("kserve-manager", argv, workdir / "kserve-manager.log")
        daemon.start()
        try:
            daemon.wait_until(functools.partial(_ready, probe), "a ready /readyz")
        except ControlPlaneError as err:
            daemon.stop()
            if "address already in use" not in str(err) or attempt == attempts:
                raise
        else:
            return daemon, webhook
    raise ControlPlaneError(f"KServe's manager found no free ports in {attempts} attempts")


@contextlib.contextmanager
def start_kserve(apiserver: ApiServer, workdir: Path) -> Iterator[KServe]:
    """KServe v0.20 (CRDs, ConfigMap, manager, webhooks) on ``apiserver``; webhooks removed on exit."""
    assets = resolve_kserve_assets()
    workdir.mkdir(parents=True, exist_ok=True)
    install_crds(apiserver, assets)
    with contextlib.suppress(ControlPlaneError):
        apiserver.kubectl("create", "namespace", KSERVE_NAMESPACE)
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(standard_mode_configmap(assets)))
    daemon, port = _start_manager(apiserver, assets, workdir)
    configs = webhook_configurations(assets, port=port, ca_pem=apiserver.ca_file.read_bytes())
    try:
        for config in configs:
            apiserver.kubectl("apply", "-f", "-", input=json.dumps(config))
        yield KServe(apiserver=apiserver, daemon=daemon, webhook_port=port, assets=assets)
    finally:
        for config in configs:
            kind = config["kind"].lower()
            apiserver.kubectl("delete", kind, config["metadata"]["name"], "--ignore-not-found")
        daemon.stop()


@pytest.fixture(scope="session")
def isvc_crd(apiserver: ApiServer) -> str:
    """KServe's InferenceService CRD installed in the session's API server."""
    return install_isvc_crd(apiserver)
