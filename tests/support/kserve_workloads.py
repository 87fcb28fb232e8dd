"""Test support: the workloads the KServe tests and benchmark run through KServe.

The serving runtime is busybox's ``httpd`` serving the model directory on the host's loopback (the
test nodes have no CNI, so pods use the host network); its readiness probe fetches the model's
``config.json``, so Ready means the server reads the weights. ``push_model`` pushes a modelcar with
a ``config.json`` unique to the call and 4 MiB of random weights.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from tests.support.node import NodeCluster
from tests.support.oci import PushedImage, push_modelcar
from tests.support.registry import RunningRegistry

GATE = "modelcar-prefetcher.io/test-hold"
MIB = 1024**2
SMALL = {"cpu": "50m", "memory": "64Mi"}


@dataclass(frozen=True)
class Model:
    """A modelcar pushed for one test, with the contents its server must serve."""

    image: PushedImage
    config: bytes

    @property
    def uri(self) -> str:
        return self.image.uri


def push_model(registry: RunningRegistry, name: str) -> Model:
    config = json.dumps({"model": name, "nonce": uuid.uuid4().hex}).encode()
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)
    image = push_modelcar(
        registry, f"models/kserve-{name}", files={"config.json": config}, model_size_bytes=4 * MIB, seed=seed
    )
    return Model(image=image, config=config)


def server_container(image: str, port: int, *, root: str = "/mnt/models", **extra: Any) -> dict[str, Any]:
    """busybox httpd serving ``root`` on the host's loopback; Ready once it serves ``config.json``."""
    probe = {"path": "/config.json", "port": port, "host": "127.0.0.1"}
    return {
        "name": "kserve-container",
        "image": image,
        # KServe appends its own arguments to a custom transformer's container (--model_name,
        # --predictor_host, --http_port: CustomTransformer.GetContainer); ``sh -c`` ignores them.
        "command": ["/bin/sh", "-c", f"exec /bin/busybox httpd -f -p 127.0.0.1:{port} -h {root}", "server"],
        "ports": [{"containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": probe, "periodSeconds": 1},
        "resources": {"requests": SMALL, "limits": SMALL},
        **extra,
    }


def serving_runtime(namespace: str, image: str, port: int) -> dict[str, Any]:
    """A ServingRuntime chosen automatically for the ``tiny`` and ``sklearn`` model formats."""
    container = server_container(image, port)
    del container["resources"]  # the InferenceService's own resources apply
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": "tiny", "namespace": namespace},
        "spec": {
            "supportedModelFormats": [
                {"name": "tiny", "autoSelect": True},
                {"name": "sklearn", "version": "1", "autoSelect": True},
            ],
            "protocolVersions": ["v1"],
            "containers": [container],
        },
    }


def pod_fields(node: NodeCluster, *, gated: bool) -> dict[str, Any]:
    """Pod-spec fields of a component: host network (no CNI), this node, held by a gate if asked."""
    fields: dict[str, Any] = {
        "hostNetwork": True,
        "nodeSelector": {"kubernetes.io/hostname": node.node_name},
        "terminationGracePeriodSeconds": 1,
    }
    if gated:
        fields["schedulingGates"] = [{"name": GATE}]
    return fields


def model_predictor(uri: str) -> dict[str, Any]:
    model = {"modelFormat": {"name": "tiny"}, "storageUri": uri}
    return {"model": model | {"resources": {"requests": SMALL, "limits": SMALL}}}


def inference_service(
    namespace: str, name: str, spec: dict[str, Any], node: NodeCluster, *, gated: bool
) -> dict[str, Any]:
    """An InferenceService whose components run on ``node``'s host network, gated if asked."""
    for component in spec.values():
        component.update(pod_fields(node, gated=gated))
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
