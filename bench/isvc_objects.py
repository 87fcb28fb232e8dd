"""InferenceServices for the scale benchmark, shaped like real ones, and a fast way to create many.

Objects carry what real InferenceServices carry (labels, KServe annotations, the last-applied
configuration kubectl leaves, runtime args and env, resources), a few KB each. The background
mix, for a CPU node labelled ``NODE_LABELS`` with no GPUs:

* 60 % ask for ``nvidia.com/gpu`` (the node has none),
* 25 % select ``pool: gpu-a100`` (the node is in ``pool: cpu``),
* 10 % require an instance type by node affinity that the node is not,
* 5 % fit and name one of a few small models already warm on the node.

So the agent holds every record, and each pass decides the fit of all of them, but only real,
already-pulled images are ever resolved. Creation goes straight to the API server over
kept-alive HTTPS connections from a thread pool: ``kubectl apply`` costs a GET per object.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.support.apiserver import ApiServer

NODE_LABELS = {"pool": "cpu", "node.kubernetes.io/instance-type": "c6i.8xlarge"}
ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices"
GPU_TYPES = ["p4d.24xlarge", "p5.48xlarge", "g6e.12xlarge"]


def fake_uri(registry_host: str, i: int) -> str:
    """A pinned modelcar URI that is never pulled (its InferenceService does not fit)."""
    digest = hashlib.sha256(f"background-{i}".encode()).hexdigest()
    return f"oci://{registry_host}/models/catalog-{i % 997:03d}@sha256:{digest}"


def isvc(namespace: str, name: str, uri: str, *, placement: str, minimum: int = 1) -> dict[str, Any]:
    """One InferenceService; ``placement`` is ``cpu`` (fits), ``gpu``, ``selector`` or ``affinity``."""
    spec: dict[str, Any] = {"predictor": _predictor(namespace, name, uri, placement, minimum)}
    if zlib.crc32(name.encode()) % 3 == 0:
        spec["transformer"] = _transformer(name)
    applied = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    metadata = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/part-of": "llm-platform", "team": namespace, "model-family": "llama"},
        "annotations": {
            "serving.kserve.io/deploymentMode": "RawDeployment",
            "serving.kserve.io/autoscalerClass": "hpa",
            "serving.kserve.io/enable-prometheus-scraping": "true",
            "argocd.argoproj.io/tracking-id": f"llm-{namespace}:serving.kserve.io/InferenceService:{name}",
            "modelcar-prefetcher.io/priority": str(zlib.crc32(name.encode()) % 10),
            "kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied, sort_keys=True),
        },
    }
    return {**applied, "metadata": metadata}


def _predictor(namespace: str, name: str, uri: str, placement: str, minimum: int) -> dict[str, Any]:
    model: dict[str, Any] = {
        "modelFormat": {"name": "huggingface"},
        "protocolVersion": "v2",
        "runtime": "kserve-huggingfaceserver",
        "storageUri": uri,
        "args": [
            f"--model_name={name}",
            "--max_model_len=8192",
            "--dtype=bfloat16",
            "--enable_prefix_caching",
        ],
        "env": [
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "SAFETENSORS_FAST_GPU", "value": "1"},
            {"name": "MODEL_TEAM", "value": namespace},
        ],
        "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}},
    }
    predictor: dict[str, Any] = {
        "minReplicas": minimum,
        "maxReplicas": 4,
        "serviceAccountName": "model-puller",
        "model": model,
    }
    if placement == "cpu":
        predictor["nodeSelector"] = {"pool": "cpu"}
    elif placement == "gpu":
        model["resources"]["limits"]["nvidia.com/gpu"] = "1"
        predictor["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    elif placement == "selector":
        predictor["nodeSelector"] = {"pool": "gpu-a100", "nvidia.com/gpu.present": "true"}
    else:
        term = {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": GPU_TYPES}
        required = {"nodeSelectorTerms": [{"matchExpressions": [term]}]}
        predictor["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    return predictor


def _transformer(name: str) -> dict[str, Any]:
    """A pre/post-processing container: no image model, so nothing for the node to warm."""
    container = {
        "name": "kserve-container",
        "image": "registry.example.com/platform/tokenizer-transformer:1.14.2",
        "args": [f"--model_name={name}", "--predictor_protocol=v2", "--http_port=8080"],
        "env": [
            {"name": "STORAGE_URI", "value": f"s3://tokenizers/{name}/"},
            {"name": "LOG_LEVEL", "value": "info"},
        ],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
    }
    return {"minReplicas": 1, "containers": [container]}


def background(
    namespaces: Sequence[str], count: int, *, registry_host: str, warm: Sequence[str]
) -> list[Any]:
    """``count`` InferenceServices in the mix the module docstring describes."""
    objects = []
    for i in range(count):
        slot = i % 20
        if slot == 0:
            placement, uri = "cpu", warm[(i // 20) % len(warm)]
        else:
            placement = "gpu" if slot <= 12 else "selector" if slot <= 17 else "affinity"
            uri = fake_uri(registry_host, i)
        namespace = namespaces[i % len(namespaces)]
        objects.append(isvc(namespace, f"model-{i:05d}", uri, placement=placement, minimum=i % 3 % 2))
    return objects


class Creator:
    """POSTs objects to the API server over one kept-alive HTTPS connection per thread."""

    def __init__(self, server: ApiServer) -> None:
        self._server = server
        self._context = server.ssl_context()
        self._local = threading.local()

    def post(self, path: str, body: dict[str, Any]) -> float:
        """Create one object; the wall time (``time.time()``) at which the API server's answer was read."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPSConnection(
                "127.0.0.1", self._server.port, context=self._context, timeout=60
            )
            self._local.connection = connection
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        data = answer.read()
        returned = time.time()
        if answer.status != 201:
            raise RuntimeError(f"POST {path}: {answer.status} {data[:300]!r}")
        return returned

    def create_isvc(self, obj: dict[str, Any]) -> float:
        """Create one InferenceService; see ``post``."""
        return self.post(ISVC_PATH.format(namespace=obj["metadata"]["namespace"]), obj)

    def create_many(self, objects: Sequence[dict[str, Any]], *, threads: int = 16) -> None:
        """Create every InferenceService of ``objects`` concurrently."""
        create: Callable[[dict[str, Any]], float] = self.create_isvc
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(create, objects):
                pass

    def create_namespaces(self, names: Sequence[str]) -> None:
        """Create namespaces (nothing in this benchmark needs their ServiceAccounts)."""
        for name in names:
            self.post(
                "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )
