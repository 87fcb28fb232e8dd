"""The agent in a cluster: a real kube-apiserver, containerd and registry, driven through the CLI.

Nodes and InferenceServices are created through the API; the agent (``prefetcher agent --once``
for a named node) decides from them what to pull into the real containerd, reports Events on the
InferenceService, and lifts its node's start-up taint once the node is warm.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.agent_process import TAINT, agent_config, run_cluster_agent, running_agent
from tests.support.apiserver import ApiServer
from tests.support.containerd import ContainerdFactory, RunningContainerd
from tests.support.kube_objects import apply_isvc, create_node, gpu_predictor, unique
from tests.support.oci import push_modelcar
from tests.support.pods import ContainerSpec, CriPods
from tests.support.projected import ProjectedFile
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration


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

    on_cpu = run_cluster_agent(apiserver, containerd, registry, tmp_path, cpu_node, namespace=namespace)
    assert on_cpu.returncode == 0, on_cpu.stderr
    assert image.ref not in containerd.image_refs(), "a GPU model was pulled on a node without GPUs"

    on_gpu = run_cluster_agent(apiserver, containerd, registry, tmp_path, gpu_node, namespace=namespace)
    assert on_gpu.returncode == 0, on_gpu.stderr
    assert image.ref in containerd.image_refs()
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

    result = run_cluster_agent(
        apiserver,
        containerd,
        registry,
        tmp_path,
        node,
        "--models",
        str(models),
        "--inferenceservices",
        namespace=namespace,
    )
    assert result.returncode == 0, result.stderr
    assert {served.ref, listed.ref} <= containerd.image_refs(), result.stdout
    events = json.loads(apiserver.kubectl("get", "events", "-A", "-o", "json"))["items"]
    on_node = [e for e in events if e["reason"] == "Prefetched" and e["involvedObject"]["kind"] == "Node"]
    assert any(listed.ref in e["message"] and e["involvedObject"]["name"] == node for e in on_node), events


def test_a_deleted_inferenceservice_has_its_model_evicted_and_nothing_else(
    apiserver: ApiServer,
    isvc_crd: str,
    containerd: RunningContainerd,
    registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    kept, dropped, busy, foreign = (
        push_modelcar(registry, f"models/deleted-{name}", model_size_bytes=1024**2, seed=80 + i)
        for i, name in enumerate(("kept", "dropped", "busy", "foreign"))
    )
    namespace = unique("ns")
    apiserver.create_namespace(namespace)
    node = create_node(apiserver)
    for name, image in (("kept", kept), ("dropped", dropped), ("busy", busy)):
        apply_isvc(apiserver, namespace, name, {"model": {"storageUri": image.uri}})
    config = tmp_path / "agent.yaml"
    settings = agent_config(
        containerd,
        [registry.host],
        tmp_path,
        resyncSeconds=1,
        eviction={"graceSeconds": 0},
        kubernetes={"namespaces": [namespace]},
    )
    config.write_text(json.dumps(settings))
    pods = CriPods(containerd.endpoint, log_root=tmp_path / "logs")
    pods.ensure_image(foreign.ref)  # pulled by someone else: never the agent's to remove

    with (
        running_agent(config, node=node, kubeconfig=apiserver.kubeconfig, log_file=tmp_path / "log") as agent,
        pods,
        pods.sandbox("server") as sandbox,
    ):
        agent.wait(
            lambda: {kept.ref, dropped.ref, busy.ref} <= containerd.image_refs(), what="three warm models"
        )
        container = sandbox.start(ContainerSpec("server", busy.ref, command=["sleep", "3600"]))
        sandbox.wait_running(container)
        # One watch stream: the agent sees "busy" gone before "dropped" is.
        apiserver.kubectl("delete", "inferenceservice", "busy", "-n", namespace, "--wait=false")
        apiserver.kubectl("delete", "inferenceservice", "dropped", "-n", namespace, "--wait=false")
        agent.wait(lambda: dropped.ref not in containerd.image_refs(), what="the deleted model's eviction")
        passes = agent.metric("prefetcher_last_reconcile_timestamp_seconds")
        agent.wait(
            lambda: agent.metric("prefetcher_last_reconcile_timestamp_seconds") > passes, what="another pass"
        )
        assert {kept.ref, busy.ref, foreign.ref} <= containerd.image_refs(), agent.log()
        assert agent.metric("prefetcher_evictions_total", reason="not_desired") == 1
    assert f"evicted {dropped.ref} (not_desired" in agent.log()


def test_an_invalid_configmap_edit_keeps_the_last_good_config_until_a_valid_one(
    apiserver: ApiServer,
    isvc_crd: str,
    containerd_factory: ContainerdFactory,
    registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    node_containerd = containerd_factory(root_size_mb=256)
    small, later = (
        push_modelcar(registry, f"models/reload-{name}", model_size_bytes=1024**2, seed=90 + i)
        for i, name in enumerate(("small", "later"))
    )
    big = push_modelcar(registry, "models/reload-big", model_size_bytes=40 * 1024**2, seed=92)
    namespace = unique("ns")
    apiserver.create_namespace(namespace)
    node = create_node(apiserver)
    apply_isvc(apiserver, namespace, "small", {"model": {"storageUri": small.uri}})
    apply_isvc(apiserver, namespace, "big", {"model": {"storageUri": big.uri}})
    # 10% of a 256 MiB image filesystem: the big model (40 MiB, twice that unpacked) never fits.
    settings = agent_config(
        node_containerd, [registry.host], tmp_path, resyncSeconds=1, kubernetes={"namespaces": [namespace]}
    )
    projected = ProjectedFile(tmp_path / "configmap", "agent.yaml")
    projected.write(json.dumps(settings | {"budget": {"maxUsagePercent": 10}}))

    log_file = tmp_path / "agent.log"
    with running_agent(
        projected.path, node=node, kubeconfig=apiserver.kubeconfig, log_file=log_file
    ) as agent:
        agent.wait(lambda: small.ref in node_containerd.image_refs(), what="the small model")
        agent.wait(lambda: agent.metric("prefetcher_models_skipped", reason="too_large") == 1, what="a skip")
        # A bad edit that would also have let the big model in: the whole edit is refused.
        bad = settings | {"budget": {"maxUsagePercent": 90}, "pull": {"concurrency": 0}}
        projected.write(json.dumps(bad))
        agent.wait(
            lambda: agent.metric("prefetcher_config_reloads_total", outcome="invalid") == 1, what="rejection"
        )
        apply_isvc(apiserver, namespace, "later", {"model": {"storageUri": later.uri}})
        agent.wait(lambda: later.ref in node_containerd.image_refs(), what="a new model under the old config")
        assert big.ref not in node_containerd.image_refs(), "the rejected budget was applied"
        events = json.loads(apiserver.kubectl("get", "events", "-n", "default", "-o", "json"))["items"]
        rejected = [
            e for e in events if e["reason"] == "ConfigRejected" and e["involvedObject"]["name"] == node
        ]
        assert [(e["type"], "pull.concurrency" in e["message"]) for e in rejected] == [("Warning", True)]

        projected.write(json.dumps(settings | {"budget": {"maxUsagePercent": 90}}))
        agent.wait(lambda: big.ref in node_containerd.image_refs(), what="the big model under the new budget")
        assert agent.metric("prefetcher_config_reloads_total", outcome="success") == 1
        assert agent.metric("prefetcher_config_reloads_total", outcome="invalid") == 1
