"""The test cluster itself: a real kubelet node on a loop-mounted ext4 image store runs pods.

These prove the fixture the kubelet-facing tests build on: the node registers and becomes Ready,
a host-network Pod with an image the suite built runs to Ready, a Deployment scaled from zero gets
a Ready pod (kube-scheduler and kube-controller-manager at work), a node that registers with
a start-up taint keeps a pod that does not tolerate it Pending until the taint is removed, and
filling the small image filesystem makes kubelet itself reclaim space.
"""

from __future__ import annotations

import functools
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from prefetcher.adapters.cri_api import api_pb2 as cri
from tests.support.cluster import NodeClusterFactory
from tests.support.kubelet import RELAXED_EVICTION, KubeletOptions, Taint
from tests.support.node import NodeCluster, condition
from tests.support.oci import push_modelcar, push_sandbox_image
from tests.support.pods import CriPods
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration
MIB = 1024**2
STARTUP_TAINT = Taint("modelcar-prefetcher.io/warming", "true", "NoSchedule")


def namespace(node: NodeCluster) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    node.cluster.create_namespace(name)
    return name


def pod_spec(node: NodeCluster, image: str, command: str, **extra: Any) -> dict[str, Any]:
    """A host-network pod spec pinned to ``node`` by label (so the scheduler still decides)."""
    container = {"name": "main", "image": image, "command": ["sh", "-c", command], **extra}
    return {
        "hostNetwork": True,
        "nodeSelector": {"kubernetes.io/hostname": node.node_name},
        "terminationGracePeriodSeconds": 1,
        "containers": [container],
    }


def apply(node: NodeCluster, obj: dict[str, Any]) -> None:
    node.kubectl("apply", "-f", "-", input=json.dumps(obj))


def pod(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def test_the_node_registers_becomes_ready_on_an_ext4_image_store_and_survives_a_restart(
    node_cluster: NodeCluster,
) -> None:
    node = node_cluster.wait_ready()

    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.32.5"
    assert info["containerRuntimeVersion"].startswith("containerd://1.6")
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == node_cluster.node_name
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    root = str(node_cluster.containerd.root)
    assert any(line.split()[4] == root and " - ext4 /dev/loop" in line for line in mounts)
    usage = node_cluster.image_fs_usage()
    assert 250 * MIB < usage.capacity_bytes <= 300 * MIB
    assert usage.used_percent < 50
    config = node_cluster.kubelet_config()
    assert (config["imageGCHighThresholdPercent"], config["imageGCLowThresholdPercent"]) == (85, 80)
    assert config["evictionHard"]["imagefs.available"] == "0%"
    assert config["cgroupDriver"] == "cgroupfs"

    node_cluster.restart_kubelet()
    node_cluster.wait_for(lambda: len(node_cluster.events("Starting")) == 2, what="a second 'Starting' Event")


def test_a_host_network_pod_with_a_suite_built_image_runs_to_ready(
    node_cluster: NodeCluster, registry: RunningRegistry
) -> None:
    image = push_modelcar(registry, "cluster/modelcar", files={"config.json": b'{"model": "tiny"}'})
    ns = namespace(node_cluster)
    probe = {"exec": {"command": ["cat", "/models/config.json"]}, "periodSeconds": 1}
    spec = pod_spec(node_cluster, image.tag_ref, "echo started; exec sleep infinity", readinessProbe=probe)
    apply(
        node_cluster,
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "modelcar", "namespace": ns}, "spec": spec},
    )

    pod = node_cluster.wait_pod_ready(ns, "modelcar")

    assert pod["spec"]["nodeName"] == node_cluster.node_name
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(image.digest)
    assert node_cluster.wait_for(
        lambda: "started" in node_cluster.pod_logs(ns, "modelcar", "main"), what="the container's log"
    )


def test_a_deployment_scaled_from_zero_gets_a_ready_pod(
    node_cluster: NodeCluster, registry: RunningRegistry
) -> None:
    image = push_sandbox_image(registry, repository="cluster/sleep", tag="v1")
    ns = namespace(node_cluster)
    labels = {"app": "sleeper"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sleeper", "namespace": ns},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": pod_spec(node_cluster, image.tag_ref, "exec sleep infinity"),
            },
        },
    }
    apply(node_cluster, deployment)
    node_cluster.kubectl("scale", "-n", ns, "deployment/sleeper", "--replicas=1")

    def ready_replicas() -> int:
        status: dict[str, Any] = node_cluster.get("deployment", "-n", ns, "sleeper")["status"]
        return int(status.get("readyReplicas", 0))

    node_cluster.wait_for(lambda: ready_replicas() == 1, what="deployment sleeper with 1 ready replica")
    pods = node_cluster.get("pods", "-n", ns, "-l", "app=sleeper")["items"]
    assert [p["spec"]["nodeName"] for p in pods] == [node_cluster.node_name]
    assert condition(pods[0], "Ready")["status"] == "True"


def test_a_node_registered_with_a_taint_keeps_an_intolerant_pod_pending_until_it_is_lifted(
    node_cluster_factory: NodeClusterFactory, registry: RunningRegistry
) -> None:
    node = node_cluster_factory(
        KubeletOptions(register_with_taints=[STARTUP_TAINT], labels={"modelcar-prefetcher.io/pool": "gpu"})
    )
    obj = node.node()
    assert STARTUP_TAINT.as_dict() in [
        {k: t.get(k, "") for k in ("key", "value", "effect")} for t in obj["spec"]["taints"]
    ]
    assert obj["metadata"]["labels"]["modelcar-prefetcher.io/pool"] == "gpu"
    image = push_sandbox_image(registry, repository="cluster/sleep", tag="v1")
    ns = namespace(node)
    spec = pod_spec(node, image.tag_ref, "exec sleep infinity")
    apply(
        node,
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "waiter", "namespace": ns}, "spec": spec},
    )

    def unschedulable() -> bool:
        scheduled = condition(node.get("pod", "-n", ns, "waiter"), "PodScheduled")
        return scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"

    node.wait_for(unschedulable, what="the scheduler to find the pod unschedulable")
    assert STARTUP_TAINT.key in node.describe_pod(ns, "waiter")

    node.kubectl("taint", "node", node.node_name, f"{STARTUP_TAINT.key}:{STARTUP_TAINT.effect}-")

    pod = node.wait_pod_ready(ns, "waiter")
    assert pod["spec"]["nodeName"] == node.node_name


def test_an_image_filesystem_filled_past_the_eviction_threshold_makes_kubelet_delete_unused_images(
    node_cluster_factory: NodeClusterFactory, registry: RunningRegistry
) -> None:
    # Periodic image GC runs only every 5 minutes; the eviction manager checks every 10 seconds.
    eviction = {**RELAXED_EVICTION, "imagefs.available": "60%"}
    node = node_cluster_factory(KubeletOptions(image_minimum_gc_age="1s", eviction_hard=eviction))
    image = push_modelcar(registry, "cluster/filler", model_size_bytes=80 * MIB, seed=80)
    with CriPods(node.endpoint, log_root=node.kubelet.paths.workdir / "cri") as runtime:
        runtime.ensure_image(image.ref)
        assert node.image_fs_usage().used_percent > 40, "content and snapshot: about twice the model"

        def image_gone() -> bool:
            listed = runtime.call("ListImages", cri.ListImagesRequest()).images
            return image.ref not in {d for i in listed for d in i.repo_digests}

        node.wait_for(image_gone, what="kubelet to delete the unused image")

    # containerd frees the image's content and snapshot in its garbage collector, after the image
    # record is gone: the space comes back shortly after the listing changes, not with it.
    node.wait_for(lambda: node.image_fs_usage().used_percent < 40, what="the image's space freed")
    # Events, not the condition: DiskPressure clears again once the next check finds space.
    for reason in ("EvictionThresholdMet", "NodeHasDiskPressure"):
        node.wait_for(functools.partial(node.events, reason), what=f"a {reason} Event on the node")
