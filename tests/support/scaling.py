"""Test support: a modelcar Deployment on one node, scaled from zero and timed to its pod's Ready.

``modelcar_deployment`` builds a Deployment at zero replicas whose pod template opts in to the
wiring webhook (label ``modelcar-prefetcher.io/inject: "true"``, annotation
``modelcar-prefetcher.io/model-uri``), runs host-network on the node named by its nodeSelector,
and has one server container whose readiness probe reads the model through ``/mnt/models``: Ready
means the weights are reachable. ``Scaler`` talks to the API server as the admin over one
kept-alive HTTPS connection: it patches the Deployment's scale subresource (what ``kubectl scale``
sends) and polls the pods every 50 ms, so a scale-up is timed from the request to the first poll
that sees the pod Ready, without a kubectl process start in the measurement.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from typing import Any

from tests.support.node import NodeCluster, condition
from tests.support.oci import MODEL_FILE

INJECT_LABEL = "modelcar-prefetcher.io/inject"
MODEL_URI_ANNOTATION = "modelcar-prefetcher.io/model-uri"
MODEL_CONFIG_FILE = "config.json"
READY_COMMAND = ("sh", "-c", f"test -s /mnt/models/{MODEL_FILE} && cat /mnt/models/{MODEL_CONFIG_FILE}")
POLL_SECONDS = 0.05
SCALE_TIMEOUT_SECONDS = 300.0
_REQUEST_TIMEOUT_SECONDS = 30


def modelcar_deployment(
    name: str, namespace: str, *, node_name: str, model_uri: str, server_image: str
) -> dict[str, Any]:
    """A Deployment (replicas 0) of one server reading ``model_uri`` through the webhook's wiring."""
    server = {
        "name": "server",
        "image": server_image,
        "command": ["sh", "-c", "exec sleep infinity"],
        "readinessProbe": {"exec": {"command": list(READY_COMMAND)}, "periodSeconds": 1},
    }
    template = {
        "metadata": {
            "labels": {"app": name, INJECT_LABEL: "true"},
            "annotations": {MODEL_URI_ANNOTATION: model_uri},
        },
        "spec": {
            "hostNetwork": True,
            "nodeSelector": {"kubernetes.io/hostname": node_name},
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "containers": [server],
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}}, "template": template},
    }


def image_events(node: NodeCluster, namespace: str, pod: str) -> list[dict[str, Any]]:
    """kubelet's image Events about ``pod`` (``Pulling``, ``Pulled``): reason, container, message."""
    selector = f"involvedObject.kind=Pod,involvedObject.name={pod}"
    items = node.get("events", "-n", namespace, f"--field-selector={selector}")["items"]
    return [
        {
            "reason": e.get("reason"),
            "container": e.get("involvedObject", {}).get("fieldPath", ""),
            "message": e.get("message", ""),
        }
        for e in items
        if e.get("reason") in ("Pulling", "Pulled")
    ]


class Scaler:
    """Scales Deployments and watches their pods on ``node``'s API server (as the admin)."""

    def __init__(self, node: NodeCluster) -> None:
        self.node = node
        self._connection: http.client.HTTPSConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> Scaler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One API request on the kept-alive connection (opened again once if the server closed it)."""
        headers = {"Content-Type": "application/merge-patch+json"} if body is not None else {}
        data = json.dumps(body) if body is not None else None
        for attempt in (1, 2):
            if self._connection is None:
                server = self.node.apiserver
                context, timeout = server.ssl_context(), _REQUEST_TIMEOUT_SECONDS
                self._connection = http.client.HTTPSConnection(
                    "127.0.0.1", server.port, context=context, timeout=timeout
                )
            try:
                self._connection.request(method, path, body=data, headers=headers)
                answer = self._connection.getresponse()
                text = answer.read()
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
                continue
            if answer.status != 200:
                raise AssertionError(f"{method} {path}: {answer.status} {text[:500]!r}")
            return json.loads(text)
        raise AssertionError(f"{method} {path}: no answer")

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set the Deployment's replicas through its scale subresource, as ``kubectl scale`` does."""
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"
        self._request("PATCH", path, {"spec": {"replicas": replicas}})

    def pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The Deployment's pods (label ``app=<name>``)."""
        query = urllib.parse.urlencode({"labelSelector": f"app={name}"})
        path = f"/api/v1/namespaces/{namespace}/pods?{query}"
        items: list[dict[str, Any]] = self._request("GET", path)["items"]
        return items

    def scale_up(self, namespace: str, name: str) -> tuple[float, dict[str, Any]]:
        """Scale 0 -> 1; seconds from the request to the first poll seeing the pod Ready, and the pod."""
        if self.pods(namespace, name):
            raise AssertionError(f"deployment {namespace}/{name} still has pods before scaling up")
        started = time.monotonic()
        self.scale(namespace, name, 1)
        deadline = started + SCALE_TIMEOUT_SECONDS
        while True:
            ready = [
                p
                for p in self.pods(namespace, name)
                if "deletionTimestamp" not in p["metadata"] and condition(p, "Ready").get("status") == "True"
            ]
            now = time.monotonic()
            if ready:
                return now - started, ready[0]
            if now > deadline:
                pods = [p["metadata"]["name"] for p in self.pods(namespace, name)]
                details = "\n".join(self.node.describe_pod(namespace, p) for p in pods)
                raise AssertionError(
                    f"no Ready pod of {namespace}/{name} within {SCALE_TIMEOUT_SECONDS}s\n"
                    f"{details}\n{self.node.log_tails()}"
                )
            time.sleep(POLL_SECONDS)

    def scale_down(self, namespace: str, name: str) -> None:
        """Scale to 0 and wait until the API server holds no pod of the Deployment."""
        self.scale(namespace, name, 0)
        self.node.wait_for(
            lambda: not self.pods(namespace, name),
            what=f"the pods of {namespace}/{name} to be gone",
            timeout_seconds=SCALE_TIMEOUT_SECONDS,
        )
