"""Scale-from-zero through a real kubelet: a node the agent warmed starts the pod without a pull.

Two nodes of the test cluster; the webhook CLI runs on loopback, registered with the cluster's
API server for this test's namespace. A Deployment per node (replicas 0, host network, pinned by
nodeSelector) opts in to the webhook with a modelcar pinned by digest; its server's readiness
probe reads the model through ``/mnt/models``. On one node ``prefetcher agent --once`` with a models
file pulls the modelcar first. Scaled to one replica, both pods become Ready, wired by the webhook;
kubelet's Events tell the two apart: the warmed node found the image "already present on machine"
and pulled nothing, the other pulled it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from prefetcher.adapters.cri import CriImageRuntime
from tests.support.agent_process import prefetch_models
from tests.support.cluster import Cluster, NodeClusterFactory
from tests.support.node import NodeCluster
from tests.support.oci import PushedImage, push_modelcar, push_sandbox_image
from tests.support.pods import CriPods
from tests.support.registry import RunningRegistry
from tests.support.scaling import MODEL_CONFIG_FILE, Scaler, image_events, modelcar_deployment
from tests.support.webhook import webhook_process

pytestmark = pytest.mark.integration
MIB = 1024**2


def has_image(node: NodeCluster, ref: str) -> bool:
    with CriImageRuntime(node.endpoint) as runtime:
        return runtime.image_status(ref) is not None


def model_events(node: NodeCluster, namespace: str, pod: str, model: PushedImage) -> list[dict[str, Any]]:
    """kubelet's image Events about the model image, once the modelcar container's has arrived."""

    def arrived() -> list[dict[str, Any]] | None:
        events = [e for e in image_events(node, namespace, pod) if model.ref in e["message"]]
        modelcar = [e for e in events if e["container"] == "spec.initContainers{modelcar}"]
        return events if modelcar else None

    return node.wait_for(arrived, what=f"kubelet's image Events for the modelcar of {pod}")


def assert_wired(pod: dict[str, Any], node: NodeCluster, model: PushedImage) -> None:
    spec = pod["spec"]
    assert spec["nodeName"] == node.node_name
    assert spec["shareProcessNamespace"] is True
    assert [c["name"] for c in spec["initContainers"]] == ["modelcar-init", "modelcar"]
    assert {c["image"] for c in spec["initContainers"]} == {model.ref}
    assert spec["initContainers"][1]["restartPolicy"] == "Always"
    (server,) = spec["containers"]
    assert {"name": "kserve-provision-location", "mountPath": "/mnt"} in server["volumeMounts"]
    assert server["securityContext"]["runAsUser"] == 1010


def test_a_warmed_node_scales_from_zero_without_pulling_the_model(
    cluster: Cluster, node_cluster_factory: NodeClusterFactory, registry: RunningRegistry, tmp_path: Path
) -> None:
    warm, cold = node_cluster_factory(), node_cluster_factory()
    model = push_modelcar(
        registry,
        "scale/model",
        files={MODEL_CONFIG_FILE: b'{"model": "tiny"}'},
        model_size_bytes=8 * MIB,
        seed=808,
    )
    server = push_sandbox_image(registry, repository="scale/server", tag="v1")
    ns = f"scale-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(ns)
    deployments = {"warm": warm, "cold": cold}
    for name, node in deployments.items():
        with CriPods(node.endpoint, log_root=tmp_path / "cri") as pods:
            pods.ensure_image(server.ref)  # present on both: only the model image differs
        spec = modelcar_deployment(
            name, ns, node_name=node.node_name, model_uri=model.uri, server_image=server.ref
        )
        node.kubectl("apply", "-f", "-", input=json.dumps(spec))

    prefetched = prefetch_models(warm.containerd, [registry.host], tmp_path / "agent", [model.uri])
    assert prefetched.returncode == 0, prefetched.stdout + prefetched.stderr
    assert has_image(warm, model.ref) and not has_image(cold, model.ref)

    started = {}
    with webhook_process(cluster.apiserver, tmp_path / "webhook", namespace=ns):
        for name, node in deployments.items():
            with Scaler(node) as scaler:
                started[name] = scaler.scale_up(ns, name)

    for name, node in deployments.items():
        seconds, pod = started[name]
        pod_name = pod["metadata"]["name"]
        print(f"{name}: Ready {seconds:.2f}s after the scale request")
        assert_wired(pod, node, model)
        assert "OK: /models is present" in node.pod_logs(ns, pod_name, "modelcar-init")
        events = model_events(node, ns, pod_name, model)
        messages = [(e["reason"], e["message"]) for e in events]
        if name == "warm":
            assert all("already present on machine" in m for _, m in messages), messages
            assert "Pulling" not in {reason for reason, _ in messages}, messages
        else:
            assert ("Pulling", f'Pulling image "{model.ref}"') in messages, messages
            assert any(m.startswith(f'Successfully pulled image "{model.ref}"') for _, m in messages)
