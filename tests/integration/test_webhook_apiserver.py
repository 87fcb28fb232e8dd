"""The webhook registered with a real kube-apiserver: pods stored by the API server are wired.

The real HTTPS server runs on loopback and is registered with the MutatingWebhookConfiguration of
deploy/webhook, its ``clientConfig`` pointed at ``https://127.0.0.1:<port>/mutate`` with the test
CA as ``caBundle``: the selectors, failure policy and reinvocation policy under test are the
shipped ones. A kube-controller-manager (deployment, replicaset and statefulset controllers only)
turns Deployments and StatefulSets into pods through the same admission chain.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from prefetcher.webhook.config import WebhookConfig
from tests.support.apiserver import ApiServer, Daemon
from tests.support.polling import eventually
from tests.support.webhook import register, rendered_webhook_config
from tests.support.webhook_server import Served, start_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KSERVE = "internal.serving.kserve.io/storage-initializer-sourceuri"
PINNED = "oci://quay.io/acme/llama@sha256:" + "5" * 64
DEADLINE_SECONDS = 60.0
CONFIG_NAME = "modelcar-prefetcher-webhook"

WEBHOOK_NAMESPACE = "modelcar-prefetcher-webhook"

def kubectl(apiserver: ApiServer, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """kubectl as the admin, returning stderr too (admission warnings are printed there)."""
    argv = [str(apiserver.assets_dir / "kubectl"), f"--kubeconfig={apiserver.kubeconfig}", *args]
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def webhook(apiserver: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Our server (default config: native sidecar) registered with the shipped configuration."""
    served = start_server(tmp_path_factory.mktemp("webhook"), WebhookConfig())
    register(
        apiserver,
        rendered_webhook_config(),
        url=f"https://127.0.0.1:{served.server.port}/mutate",
        ca_pem=served.ca.pem,
    )
    yield served
    apiserver.kubectl("delete", "mutatingwebhookconfiguration", CONFIG_NAME, "--ignore-not-found")
    served.server.stop()


@pytest.fixture(scope="module")
def controllers(apiserver: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """kube-controller-manager running only the workload controllers that create pods."""
    workdir = tmp_path_factory.mktemp("controllers")
    argv = [
        str(apiserver.assets_dir / "kube-controller-manager"),
        f"--kubeconfig={apiserver.kubeconfig}",
        "--controllers=deployment,replicaset,statefulset",
        "--leader-elect=false",
        "--use-service-account-credentials=false",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
    ]
    daemon = Daemon("kube-controller-manager", argv, workdir / "kube-controller-manager.log")
    daemon.start()
    yield
    daemon.stop()


def namespace(apiserver: ApiServer, name: str, labels: dict[str, str] | None = None) -> str:
    apiserver.create_namespace(name)
    if labels:
        apiserver.kubectl("label", "namespace", name, "--overwrite", *(f"{k}={v}" for k, v in labels.items()))
    return name


def pod_manifest(
    name: str, ns: str, *, labels: dict[str, str], annotations: dict[str, str], containers: list[str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": c, "image": f"runtime/{c}:1"} for c in containers]},
    }


def create(apiserver: ApiServer, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return kubectl(apiserver, "create", "-f", "-", input=json.dumps(manifest))


def stored_pod(apiserver: ApiServer, ns: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = json.loads(apiserver.kubectl("get", "pod", "-n", ns, name, "-o", "json"))
    return pod


def names(containers: list[dict[str, Any]] | None) -> list[str]:
    return [c["name"] for c in containers or []]


def counts(served: Served) -> dict[str, float]:
    return {
        labels[0][1]: value
        for (metric, labels), value in served.samples().items()
        if metric == "prefetcher_webhook_requests_total"
    }


def test_kserve_pod_is_stored_wired(apiserver: ApiServer, webhook: Served) -> None:
    ns = namespace(apiserver, "wh-kserve")
    manifest = pod_manifest(
        "llama-predictor",
        ns,
        labels={"serving.kserve.io/inferenceservice": "llama"},
        annotations={KSERVE: PINNED},
        containers=["kserve-container", "queue-proxy"],
    )
    result = create(apiserver, manifest)
    assert result.returncode == 0, result.stderr
    pod = stored_pod(apiserver, ns, "llama-predictor")
    spec = pod["spec"]
    assert spec["shareProcessNamespace"] is True
    assert names(spec["initContainers"]) == ["modelcar-init", "modelcar"]
    init, modelcar = spec["initContainers"]
    assert modelcar["restartPolicy"] == "Always" and "startupProbe" in modelcar
    assert init["image"] == modelcar["image"] == PINNED.removeprefix("oci://")
    assert init["imagePullPolicy"] == "IfNotPresent"
    server, proxy = spec["containers"]
    assert {"name": "kserve-provision-location", "mountPath": "/mnt"} in server["volumeMounts"]
    assert {e["name"]: e.get("value") for e in server["env"]}["HF_HUB_OFFLINE"] == "1"
    assert server["securityContext"]["runAsUser"] == modelcar["securityContext"]["runAsUser"] == 1010
    assert "env" not in proxy
    # The API server added its own defaults on top (service account token volume and mounts).
    assert "kserve-provision-location" in names(spec["volumes"])


def test_selectors_decide_which_pods_are_sent(apiserver: ApiServer, webhook: Served) -> None:
    ns = namespace(apiserver, "wh-selectors")
    unlabelled = pod_manifest(
        "unlabelled", ns, labels={}, annotations={KSERVE: PINNED}, containers=["kserve-container"]
    )
    assert create(apiserver, unlabelled).returncode == 0
    assert "initContainers" not in stored_pod(apiserver, ns, "unlabelled")["spec"]
    system = pod_manifest(
        "in-kube-system",
        "kube-system",
        labels={"serving.kserve.io/inferenceservice": "x"},
        annotations={KSERVE: PINNED},
        containers=["kserve-container"],
    )
    apiserver.create_namespace("kube-system")
    assert create(apiserver, system).returncode == 0
    assert "initContainers" not in stored_pod(apiserver, "kube-system", "in-kube-system")["spec"]
    opted_out = namespace(apiserver, "wh-opted-out", {"modelcar-prefetcher.io/webhook": "disabled"})
    manifest = pod_manifest(
        "p", opted_out, labels={"modelcar-prefetcher.io/inject": "true"}, annotations={}, containers=["a"]
    )
    manifest["metadata"]["annotations"] = {"modelcar-prefetcher.io/model-uri": "not even a uri"}
    assert create(apiserver, manifest).returncode == 0


def test_denials_and_warnings_reach_the_user(apiserver: ApiServer, webhook: Served) -> None:
    ns = namespace(apiserver, "wh-feedback")
    labels = {"modelcar-prefetcher.io/inject": "true"}
    bad = pod_manifest(
        "bad",
        ns,
        labels=labels,
        annotations={"modelcar-prefetcher.io/model-uri": "s3://b/m"},
        containers=["vllm"],
    )
    result = create(apiserver, bad)
    assert result.returncode != 0
    assert 'admission webhook "pods.modelcar-prefetcher.io" denied the request' in result.stderr
    assert "modelcar-prefetcher: annotation modelcar-prefetcher.io/model-uri" in result.stderr
    tagged = pod_manifest(
        "tagged",
        ns,
        labels=labels,
        annotations={"modelcar-prefetcher.io/model-uri": "oci://quay.io/acme/llama:latest"},
        containers=["vllm"],
    )
    result = create(apiserver, tagged)
    assert result.returncode == 0, result.stderr
    assert "Warning: model image quay.io/acme/llama:latest is not pinned to a digest" in result.stderr
    assert names(stored_pod(apiserver, ns, "tagged")["spec"]["initContainers"]) == [
        "modelcar-init",
        "modelcar",
    ]


def _pods_of(apiserver: ApiServer, ns: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        apiserver.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json")
    )["items"]
    return items


def _workload(kind: str, name: str, ns: str, annotations: dict[str, str]) -> dict[str, Any]:
    labels = {"app": name, "modelcar-prefetcher.io/inject": "true"}
    template = {
        "metadata": {"labels": labels, "annotations": annotations},
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 2000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {"name": "proxy", "image": "envoy:1"},
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.6.0",
                    "args": ["--model", "/models/llama"],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                },
            ],
        },
    }
    spec: dict[str, Any] = {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template}
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec}


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_workload_pods_are_wired_through_their_controller(
    apiserver: ApiServer, webhook: Served, controllers: None, kind: str
) -> None:
    ns = namespace(apiserver, f"wh-{kind.lower()}")
    annotations = {
        "modelcar-prefetcher.io/model-uri": PINNED,
        "modelcar-prefetcher.io/container": "vllm",
        "modelcar-prefetcher.io/mount-path": "/models/llama",
    }
    result = create(apiserver, _workload(kind, "vllm", ns, annotations))
    assert result.returncode == 0, result.stderr
    (pod,) = eventually(
        lambda: _pods_of(apiserver, ns, "app=vllm"),
        until=bool,
        what=f"the {kind}'s pod",
        timeout_seconds=DEADLINE_SECONDS,
    )
    spec = pod["spec"]
    proxy, vllm = spec["containers"]
    assert {"name": "kserve-provision-location", "mountPath": "/models"} in vllm["volumeMounts"]
    assert "securityContext" not in proxy or "runAsUser" not in proxy["securityContext"]
    modelcar = spec["initContainers"][-1]
    assert modelcar["name"] == "modelcar"
    assert {"name": "MODELCAR_MODEL_PATH", "value": "/models/llama"} in modelcar["env"]
    # The pod's own non-root uid is shared with the modelcar, not replaced by uidModelcar.
    assert modelcar["securityContext"]["runAsUser"] == 2000
    assert "runAsUser" not in vllm["securityContext"]


class _Touch(BaseHTTPRequestHandler):
    """A second mutating webhook that changes every pod it sees, after ours (name order)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        patch = [{"op": "add", "path": "/metadata/labels/touched", "value": "yes"}]
        answer = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": review["request"]["uid"],
                "allowed": True,
                "patchType": "JSONPatch",
                "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
            },
        }
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def touching_webhook(apiserver: ApiServer, webhook: Served, tmp_path: Path) -> Iterator[None]:
    cert, key = tmp_path / "touch.crt", tmp_path / "touch.key"
    webhook.ca.issue(cert, key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Touch)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "zz-touch"},
        "webhooks": [
            {
                "name": "touch.example.com",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ],
                "objectSelector": {"matchLabels": {"touch": "me"}},
                "clientConfig": {},
            }
        ],
    }
    register(apiserver, config, url=f"https://127.0.0.1:{server.server_address[1]}/", ca_pem=webhook.ca.pem)
    yield
    apiserver.kubectl("delete", "mutatingwebhookconfiguration", "zz-touch")
    server.shutdown()
    server.server_close()


def test_reinvocation_after_another_webhook_changes_nothing(
    apiserver: ApiServer, webhook: Served, touching_webhook: None
) -> None:
    ns = namespace(apiserver, "wh-reinvoke")
    before = counts(webhook)
    manifest = pod_manifest(
        "p",
        ns,
        labels={"serving.kserve.io/inferenceservice": "x", "touch": "me"},
        annotations={KSERVE: PINNED},
        containers=["kserve-container"],
    )
    result = create(apiserver, manifest)
    assert result.returncode == 0, result.stderr
    pod = stored_pod(apiserver, ns, "p")
    assert pod["metadata"]["labels"]["touched"] == "yes"
    assert names(pod["spec"]["initContainers"]) == ["modelcar-init", "modelcar"]
    assert names(pod["spec"]["volumes"]).count("kserve-provision-location") == 1
    after = counts(webhook)
    assert after.get("mutated", 0) - before.get("mutated", 0) == 1
    assert after.get("unchanged", 0) - before.get("unchanged", 0) == 1  # the reinvocation


def test_classic_sidecar_mode_is_accepted_by_the_api_server(
    apiserver: ApiServer, webhook: Served, tmp_path: Path
) -> None:
    ns = namespace(apiserver, "wh-classic", {"modelcar-prefetcher.io/webhook": "disabled"})
    classic = start_server(tmp_path, dataclasses.replace(WebhookConfig(), modelcar_mode="sidecar"))
    config = rendered_webhook_config()
    config["metadata"]["name"] = "modelcar-prefetcher-classic"
    for entry in config["webhooks"]:
        entry["name"] = entry["name"].replace("modelcar-prefetcher.io", "classic.modelcar-prefetcher.io")
        entry["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": ns}}
    register(apiserver, config, url=f"https://127.0.0.1:{classic.server.port}/mutate", ca_pem=classic.ca.pem)
    try:
        manifest = pod_manifest(
            "p",
            ns,
            labels={"serving.kserve.io/inferenceservice": "x"},
            annotations={KSERVE: PINNED},
            containers=["kserve-container"],
        )
        result = create(apiserver, manifest)
        assert result.returncode == 0, result.stderr
        spec = stored_pod(apiserver, ns, "p")["spec"]
        assert names(spec["initContainers"]) == ["modelcar-init"]
        assert names(spec["containers"]) == ["kserve-container", "modelcar"]
    finally:
        apiserver.kubectl("delete", "mutatingwebhookconfiguration", "modelcar-prefetcher-classic")
        classic.server.stop()


def _bundle(apiserver: ApiServer, name: str) -> list[list[x509.Certificate]]:
    config = json.loads(apiserver.kubectl("get", "mutatingwebhookconfiguration", name, "-o", "json"))
    return [
        x509.load_pem_x509_certificates(base64.b64decode(w["clientConfig"]["caBundle"]))
        for w in config["webhooks"]
    ]


def test_webhook_certs_script_fills_the_secret_and_rotates_ca_bundle(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    namespace(apiserver, WEBHOOK_NAMESPACE)
    config = rendered_webhook_config()
    config["metadata"]["name"] = "modelcar-prefetcher-certs-test"
    for entry in config["webhooks"]:
        entry["name"] = entry["name"].replace("modelcar-prefetcher.io", "certs-test.modelcar-prefetcher.io")
        entry["namespaceSelector"] = {"matchLabels": {"never-matches": "true"}}  # inert
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(config))
    env = {
        "PATH": "/usr/bin:/bin",
        "KUBECONFIG": str(apiserver.kubeconfig),
        "KUBECTL": str(apiserver.assets_dir / "kubectl"),
        "WEBHOOK_CONFIG": "modelcar-prefetcher-certs-test",
        "SECRET": "certs-test-tls",
        "HOME": str(tmp_path),
    }
    script = str(REPO / "hack" / "webhook-certs.sh")
    try:
        for run in (1, 2):
            result = subprocess.run(
                [script], env=env, capture_output=True, text=True, timeout=120, check=False
            )
            assert result.returncode == 0, result.stderr
            bundles = _bundle(apiserver, "modelcar-prefetcher-certs-test")
            assert len(bundles) == 2 and bundles[0] == bundles[1] and len(bundles[0]) == run
            secret = json.loads(
                apiserver.kubectl(
                    "get", "secret", "-n", WEBHOOK_NAMESPACE, "certs-test-tls", "-o", "json"
                )
            )
            # Applied server-side: no last-applied annotation holding a copy of tls.key.
            assert "kubectl.kubernetes.io/last-applied-configuration" not in secret["metadata"].get(
                "annotations", {}
            )
            assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {
                "tls.crt",
                "tls.key",
                "ca.crt",
            }
            leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
            assert leaf.issuer == bundles[0][0].subject  # the newest CA comes first and signed it
            leaf.verify_directly_issued_by(bundles[0][0])
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert f"modelcar-prefetcher-webhook.{WEBHOOK_NAMESPACE}.svc" in sans.get_values_for_type(
                x509.DNSName
            )
    finally:
        apiserver.kubectl("delete", "mutatingwebhookconfiguration", "modelcar-prefetcher-certs-test")
        apiserver.kubectl(
            "delete", "secret", "-n", WEBHOOK_NAMESPACE, "certs-test-tls", "--ignore-not-found"
        )
