"""The agent in a cluster: a real kube-apiserver, containerd and registry, driven through the CLI.

Nodes and InferenceServices are created through the API; the agent (``prefetcher agent --once``
for a named node) decides from them what to pull into the real containerd, reports Events on the
InferenceService, and lifts its node's start-up taint once the node is warm.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefetcher.adapters.cri import CriImageRuntime
from tests.integration.test_kube_source import apply_isvc, create_node, gpu_predictor, unique
from tests.support.apiserver import ApiServer
from tests.support.containerd import RunningContainerd
from tests.support.oci import push_modelcar
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration
TAINT = "modelcar-prefetcher.io/warming"


def run_agent(
    apiserver: ApiServer,
    containerd: RunningContainerd,
    registry: RunningRegistry,
    workdir: Path,
    node: str,
    *extra: str,
) -> subprocess.CompletedProcess[str]:
    config = workdir / f"agent-{node}.yaml"
    config.write_text(
        json.dumps(
            {
                "criEndpoint": containerd.endpoint,
                "imageFsPath": str(containerd.root),
                "stateFile": str(workdir / f"state-{node}.json"),
                "listenAddress": "127.0.0.1:0",
                "registries": {"insecure": [registry.host]},
                "kubernetes": {"startupTaint": TAINT},
            }
        )
    )
    command = [
        sys.executable,
        "-m",
        "prefetcher",
        "agent",
        "--config",
        str(config),
        "--once",
        "--node-name",
        node,
        "--kubeconfig",
        str(apiserver.kubeconfig),
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def cached(containerd: RunningContainerd) -> set[str]:
    with CriImageRuntime(containerd.endpoint) as runtime:
        return {r for image in runtime.list_images() for r in image.refs}


def test_gpu_model_warms_only_on_the_gpu_node_with_events_and_the_taint_lifted(
    apiserver: ApiServer,
    isvc_crd: str,
    containerd: RunningContainerd,
    registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    image = push_modelcar(registry, "models/cluster-gpu", model_size_bytes=2 * 1024**2, seed=77)
    namespace = unique("ns")
    apiserver.create_namespace(namespace)
    cpu_node = create_node(apiserver)
    gpu_node = create_node(apiserver, labels={"nvidia.com/gpu.present": "true"}, gpus=1)
    apiserver.kubectl("taint", "node", gpu_node, f"{TAINT}=true:NoSchedule")
    apply_isvc(apiserver, namespace, "llm", gpu_predictor(image.uri, minReplicas=0))

    on_cpu = run_agent(apiserver, containerd, registry, tmp_path, cpu_node)
    assert on_cpu.returncode == 0, on_cpu.stderr
    assert image.ref not in cached(containerd), "a GPU model was pulled on a node without GPUs"

    on_gpu = run_agent(apiserver, containerd, registry, tmp_path, gpu_node)
    assert on_gpu.returncode == 0, on_gpu.stderr
    assert image.ref in cached(containerd)
    assert f"warm     {image.ref}" in on_gpu.stdout

    node = json.loads(apiserver.kubectl("get", "node", gpu_node, "-o", "json"))
    assert TAINT not in {t["key"] for t in node["spec"].get("taints") or []}
    summary = json.loads(node["metadata"]["annotations"]["modelcar-prefetcher.io/summary"])
    assert summary["warm"] == 1 and summary["pulling"] == 0 and summary["budgetBytes"] > 0, summary
    assert summary["managedBytes"] >= image.size_bytes and summary["lastError"] == "", summary
    events = json.loads(apiserver.kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
    prefetched = [e for e in events if e["reason"] == "Prefetched" and e["involvedObject"]["name"] == "llm"]
    assert prefetched, events
    assert image.ref in prefetched[0]["message"]


def test_the_models_file_is_kept_warm_beside_inferenceservices(
    apiserver: ApiServer,
    isvc_crd: str,
    containerd: RunningContainerd,
    registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    served = push_modelcar(registry, "models/cluster-served", model_size_bytes=1024**2, seed=78)
    listed = push_modelcar(registry, "models/cluster-listed", model_size_bytes=1024**2, seed=79)
    namespace = unique("ns")
    apiserver.create_namespace(namespace)
    node = create_node(apiserver)
    apply_isvc(apiserver, namespace, "served", {"model": {"storageUri": served.uri}})
    models = tmp_path / "models.yaml"
    models.write_text(json.dumps({"models": [{"uri": listed.uri, "priority": 5}]}))

    result = run_agent(
        apiserver, containerd, registry, tmp_path, node, "--models", str(models), "--inferenceservices"
    )
    assert result.returncode == 0, result.stderr
    assert {served.ref, listed.ref} <= cached(containerd), result.stdout
    events = json.loads(apiserver.kubectl("get", "events", "-A", "-o", "json"))["items"]
    on_node = [e for e in events if e["reason"] == "Prefetched" and e["involvedObject"]["kind"] == "Node"]
    assert any(listed.ref in e["message"] and e["involvedObject"]["name"] == node for e in on_node), events
