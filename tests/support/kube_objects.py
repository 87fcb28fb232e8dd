"""Test support: Kubernetes objects made through the test API server (Nodes, InferenceServices).

Names come from ``unique`` so tests sharing one API server never collide.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from tests.support.apiserver import ApiServer

_names = itertools.count()


def unique(prefix: str) -> str:
    """A name no other test of this session uses: ``prefix-<time>-<counter>``."""
    return f"{prefix}-{time.time_ns() % 10**8}-{next(_names)}"


def create_node(apiserver: ApiServer, *, labels: dict[str, str] | None = None, gpus: int = 0) -> str:
    """A Node object (no kubelet behind it) with allocatable CPU, memory and ``gpus`` GPUs; its name."""
    name = unique("node")
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}}
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(node))
    allocatable = {"cpu": "8", "memory": "32Gi", "pods": "110"} | (
        {"nvidia.com/gpu": str(gpus)} if gpus else {}
    )
    status = {"status": {"capacity": allocatable, "allocatable": allocatable}}
    apiserver.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(status))
    # Admission taints a new Node not-ready; without a node controller, play the kubelet's part.
    apiserver.kubectl("taint", "node", name, "node.kubernetes.io/not-ready:NoSchedule-")
    return name


def apply_isvc(apiserver: ApiServer, namespace: str, name: str, predictor: dict[str, Any]) -> None:
    """Create or update an InferenceService with this ``predictor`` spec."""
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"predictor": predictor},
    }
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(isvc))


def gpu_predictor(uri: str, **extra: Any) -> dict[str, Any]:
    """A predictor of the model at ``uri`` asking for one GPU; ``extra`` adds predictor fields."""
    model = {"modelFormat": {"name": "huggingface"}, "storageUri": uri}
    return {"model": model | {"resources": {"limits": {"nvidia.com/gpu": "1"}}}, **extra}
