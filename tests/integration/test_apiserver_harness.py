"""The kube-apiserver harness: objects are served, and survive an API server restart."""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from typing import Any

import pytest

from tests.support.apiserver import STOP_TIMEOUT_SECONDS, ApiServer, ControlPlaneError

pytestmark = pytest.mark.integration

NAMESPACE = "harness"
MODEL_URI = "oci://127.0.0.1:5000/models/tiny:1.0"


def _isvc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": MODEL_URI}}},
    }


def _get_isvc(apiserver: ApiServer, name: str) -> dict[str, Any]:
    out = apiserver.kubectl("get", "inferenceservice", name, "-n", NAMESPACE, "-o", "json")
    obj: dict[str, Any] = json.loads(out)
    return obj


def test_inferenceservice_survives_apiserver_restart(apiserver: ApiServer, isvc_crd: str) -> None:
    apiserver.create_namespace(NAMESPACE)
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(_isvc("tiny")))
    status = {"status": {"url": "http://tiny.harness", "conditions": [{"type": "Ready", "status": "True"}]}}
    apiserver.kubectl(
        "patch",
        "inferenceservice",
        "tiny",
        "-n",
        NAMESPACE,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )

    before = _get_isvc(apiserver, "tiny")
    assert before["spec"]["predictor"]["model"]["storageUri"] == MODEL_URI
    assert before["status"]["url"] == "http://tiny.harness"

    apiserver.restart()

    after = _get_isvc(apiserver, "tiny")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"] == before["spec"]
    assert after["status"] == before["status"]


def test_admin_is_cluster_admin_and_default_serviceaccount_exists(apiserver: ApiServer) -> None:
    apiserver.create_namespace("harness-sa")
    assert apiserver.kubectl("auth", "can-i", "*", "*").strip() == "yes"
    sa = json.loads(apiserver.kubectl("get", "serviceaccount", "default", "-n", "harness-sa", "-o", "json"))
    assert sa["metadata"]["name"] == "default"


def test_node_identity_is_limited_by_node_authorizer(apiserver: ApiServer) -> None:
    kubeconfig = apiserver.write_kubeconfig("system:node:worker-1", groups=["system:nodes"])
    whoami = json.loads(apiserver.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig))
    assert whoami["status"]["userInfo"]["username"] == "system:node:worker-1"
    with pytest.raises(ControlPlaneError, match="forbidden"):
        apiserver.kubectl("create", "namespace", "not-for-nodes", kubeconfig=kubeconfig)


def test_restart_ends_open_watches(apiserver: ApiServer) -> None:
    apiserver.create_namespace("harness-watch")
    conn = http.client.HTTPSConnection(
        "127.0.0.1", apiserver.port, context=apiserver.ssl_context(), timeout=30
    )
    try:
        conn.request("GET", "/api/v1/namespaces?watch=1&timeoutSeconds=300")
        response = conn.getresponse()
        assert response.status == 200
        first = json.loads(response.readline())
        assert first["type"] == "ADDED"

        started = time.monotonic()
        apiserver.restart()
        restart_seconds = time.monotonic() - started

        # The stream ends (EOF or a reset) instead of hanging until its 300 s timeout.
        with contextlib.suppress(http.client.HTTPException, OSError):
            while response.readline():
                pass
    finally:
        conn.close()
    # Stop falls back to SIGKILL after STOP_TIMEOUT_SECONDS; a graceful stop is far quicker.
    assert restart_seconds < STOP_TIMEOUT_SECONDS
    assert apiserver.kubectl("get", "namespace", "harness-watch", "-o", "name").strip() == (
        "namespace/harness-watch"
    )
