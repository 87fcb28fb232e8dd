"""The agent installed as an operator installs it, on a real node, warming it before pods schedule.

Each test writes a kustomize overlay whose only resource is the repository's ``deploy/agent`` and
applies it with ``kubectl apply -k``: the agent half of the documented install. The webhook half
(``deploy/webhook``) is not deployed: the API server calls a webhook through its Service, and this
suite has no route from the API server to a pod's Service (no kube-proxy, no pod network).

The overlay sets the image built from this tree (``agent_image``) by digest, as the operator guide
does, and otherwise only what this test environment forces; ``OVERRIDES`` lists them and the first
test checks that the rendered install differs from ``deploy/agent`` there and nowhere else:

* ``hostNetwork: true`` with ``dnsPolicy: ClusterFirstWithHostNet``: there is no CNI, so a pod
  outside the host's network namespace does not start.
* ``listenAddress`` and the ``metrics`` container port: with host networking the port is the
  machine's, and other tests' nodes and agents share the machine; a free port, not 8080.
* The hostPath sources of ``cri-socket``, ``image-fs`` and ``state``: several test nodes share one
  machine, so each node's containerd has its socket, image filesystem (an ext4) and the agent's
  state in directories of its own. The container-side paths and the configuration stay as shipped:
  the node's socket is named ``containerd.sock``, so the agent finds it by auto-detection at
  ``/run/containerd/containerd.sock``.
* A ``kubernetes.io/hostname`` node selector: other tests' nodes are in the same cluster.
* ``registries.insecure``: the suite's registry speaks plain HTTP on ``127.0.0.1:<port>``.

The agent reaches the API server in-cluster, as shipped: the ServiceAccount token from kubelet's
projected volume, ``kube-root-ca.crt`` from kube-controller-manager, and ``KUBERNETES_SERVICE_HOST``
(``10.0.0.1``), which the ``service_route`` fixture routes to the API server in place of kube-proxy.
Container logs are read from kubelet's files (``pod_logs``): ``kubectl logs`` cannot reach it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from prefetcher.adapters.cri import CriImageRuntime
from prefetcher.adapters.kube_api import api_client
from tests.support.agent_deploy import (
    AGENT_READY_TIMEOUT_SECONDS,
    BASE,
    IMAGE_FS_MB,
    MIB,
    NAMESPACE,
    OVERRIDES,
    STARTUP_TAINT,
    SUMMARY,
    agent_pod,
    apply,
    changed,
    events,
    installed,
    new_namespace,
    ready_agent,
    running,
    timestamp,
)
from tests.support.agent_image import AgentImage
from tests.support.cluster import NodeClusterFactory
from tests.support.kube_objects import apply_isvc
from tests.support.kubelet import KubeletOptions
from tests.support.manifests import one, render
from tests.support.node import NodeCluster, condition
from tests.support.oci import push_modelcar
from tests.support.polling import eventually
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration

def test_the_agent_installed_from_deploy_agent_gets_ready_on_its_node_and_follows_inferenceservices(
    node_cluster_factory: NodeClusterFactory,
    overlay_for: Callable[[NodeCluster], Path],
    agent_image: AgentImage,
) -> None:
    node = node_cluster_factory(image_fs_mb=IMAGE_FS_MB)
    overlay_dir = overlay_for(node)
    base, overlay = render(BASE), render(overlay_dir)
    assert [(d["kind"], d["metadata"]["name"]) for d in base] == [
        (d["kind"], d["metadata"]["name"]) for d in overlay
    ]
    assert changed(one(base, "DaemonSet"), one(overlay, "DaemonSet")) == OVERRIDES
    for kind in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
        assert one(base, kind) == one(overlay, kind)
    shipped, edited = (one(docs, "ConfigMap")["data"] for docs in (base, overlay))
    assert shipped["models.yaml"] == edited["models.yaml"]
    assert changed(yaml.safe_load(shipped["agent.yaml"]), yaml.safe_load(edited["agent.yaml"])) == {
        "listenAddress",
        "registries.insecure.0",
    }

    with installed(node, overlay_dir):
        pod = ready_agent(node)
        name = pod["metadata"]["name"]
        assert pod["spec"]["containers"][0]["image"] == agent_image.ref

        def listed() -> str | None:
            text = node.pod_logs(NAMESPACE, name, "agent")
            return text if "inferenceservices: listed" in text else None

        log = node.wait_for(listed, what="the agent's log of listing InferenceServices")
        assert f"node {node.node_name}: listed 1" in log, log
        assert "reconcile pass failed" not in log, log
        summary = node.wait_for(
            lambda: node.node()["metadata"].get("annotations", {}).get(SUMMARY),
            what="the agent's summary annotation on its node",
        )
        assert json.loads(summary)["lastError"] == "", summary
        statuses = node.get("pod", "-n", NAMESPACE, name)["status"]["containerStatuses"]
        assert [(s["name"], s["ready"], s["restartCount"]) for s in statuses] == [("agent", True, 0)]


# --- warm before scheduling ------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One look, in this order: the model in containerd, the serving pod's binding, the taint.

    Each ``*_at`` is when that read was sent: what it saw held at some moment after that time.
    """

    image_at: float
    image_present: bool
    pod_at: float
    bound: bool
    node_at: float
    tainted: bool


class Observer:
    """Looks at the node's runtime and the API, recording every look, until the pod is bound."""

    def __init__(
        self, node: NodeCluster, runtime: CriImageRuntime, core: Any, *, ref: str, pod: tuple[str, str]
    ):
        self.node, self.runtime, self.core = node, runtime, core
        self.ref, self.pod = ref, pod
        self.seen: list[Observation] = []

    def look(self) -> Observation:
        image_at = time.time()
        present = self.runtime.image_status(self.ref) is not None
        pod_at = time.time()
        bound = bool(
            self.core.read_namespaced_pod(self.pod[1], self.pod[0], _request_timeout=5).spec.node_name
        )
        node_at = time.time()
        taints = self.core.read_node(self.node.node_name, _request_timeout=5).spec.taints or []
        tainted = any(t.key == STARTUP_TAINT.key for t in taints)
        self.seen.append(Observation(image_at, present, pod_at, bound, node_at, tainted))
        return self.seen[-1]

    def until_bound(self) -> None:
        """Look back to back until the pod is bound; fail with the daemons' logs on timeout."""
        try:
            eventually(
                lambda: self.look().bound,
                timeout_seconds=AGENT_READY_TIMEOUT_SECONDS,
                what="the serving pod bound",
                interval_seconds=0.0,
            )
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.timeline()}\n{self.node.log_tails()}") from None

    def timeline(self) -> str:
        """The looks where something changed, for failure messages."""
        lines, last = [], None
        for o in self.seen:
            if (o.image_present, o.bound, o.tainted) != last:
                lines.append(f"{o.image_at:.3f} image={o.image_present} bound={o.bound} tainted={o.tainted}")
            last = (o.image_present, o.bound, o.tainted)
        looks = len(self.seen)
        spent = self.seen[-1].node_at - self.seen[0].image_at if looks > 1 else 0.0
        return "\n".join([*lines, f"{looks} looks in {spent:.1f}s"])


def serving_pod(node: NodeCluster, namespace: str, image: str) -> dict[str, Any]:
    """A stand-in for a model server: the modelcar image itself, sleeping; no tolerations."""
    container = {"name": "server", "image": image, "command": ["sh", "-c", "exec sleep infinity"]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "server", "namespace": namespace},
        "spec": {
            "hostNetwork": True,
            "nodeSelector": {"kubernetes.io/hostname": node.node_name},
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


def test_a_node_joining_with_the_startup_taint_is_warmed_before_its_serving_pod_is_scheduled(
    node_cluster_factory: NodeClusterFactory,
    overlay_for: Callable[[NodeCluster], Path],
    registry: RunningRegistry,
) -> None:
    node = node_cluster_factory(KubeletOptions(register_with_taints=[STARTUP_TAINT]), image_fs_mb=IMAGE_FS_MB)
    model = push_modelcar(registry, "models/warm-before-scheduling", model_size_bytes=4 * MIB, seed=113)
    namespace = new_namespace(node.cluster)
    predictor = {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": model.uri}}
    apply_isvc(node.apiserver, namespace, "llm", predictor)
    apply(node, serving_pod(node, namespace, model.ref))

    def unschedulable() -> bool:
        scheduled = condition(node.get("pod", "-n", namespace, "server"), "PodScheduled")
        return scheduled.get("reason") == "Unschedulable" and STARTUP_TAINT.key in scheduled.get(
            "message", ""
        )

    node.wait_for(unschedulable, what="the serving pod Unschedulable for the start-up taint")

    api = api_client(kubeconfig=str(node.apiserver.kubeconfig))
    with (
        contextlib.closing(api),
        CriImageRuntime(node.endpoint) as runtime,
        installed(node, overlay_for(node)),
    ):
        observer = Observer(node, runtime, client.CoreV1Api(api), ref=model.ref, pod=(namespace, "server"))
        observer.look()
        agent = agent_pod(node)["metadata"]["name"]
        node.wait_for(lambda: running(node, agent), what="the agent's container running")
        # Back to back from here: the model's arrival and the pod's binding are only a pass, a taint
        # patch and a scheduling cycle apart (about 150 ms measured).
        observer.until_bound()
        pod = node.wait_pod_ready(namespace, "server")
        # The agent elected through its Lease (here the only one) records the warmth once it changed.
        node.wait_for(
            lambda: [
                e
                for e in events(node, namespace, "involvedObject.name=llm,reason=ModelWarmth")
                if e["message"] == "warm on 1 of 1 eligible nodes"
            ],
            what="a ModelWarmth Event on the InferenceService",
        )
        log = node.pod_logs(NAMESPACE, agent, "agent")

    timeline = observer.timeline()
    seen = observer.seen
    assert seen[0].tainted and not seen[0].image_present, timeline
    # Not asserted: that a look caught the model present and the pod still unbound. That window is a
    # taint patch and a scheduling cycle (~150 ms) and a stalled test process misses it. The order is
    # proven without it: the agent lifts the taint only once the model is warm ("models warm" below),
    # the pod is never bound while tainted, and kubelet finds the image already present.
    # The node was read after the pod: bound there and tainted here means bound while tainted.
    assert not [o for o in seen if o.bound and o.tainted], timeline
    last_tainted = max(o.node_at for o in seen if o.tainted)
    scheduled = condition(pod, "PodScheduled")
    assert scheduled["status"] == "True"
    # lastTransitionTime has whole seconds; the taint went after last_tainted.
    assert timestamp(scheduled["lastTransitionTime"]) >= math.floor(last_tainted), timeline
    binding = events(node, namespace, "involvedObject.name=server,reason=Scheduled")
    assert [timestamp(e["eventTime"]) > last_tainted for e in binding] == [True], (binding, timeline)
    assert f"start-up taint {STARTUP_TAINT.key} removed from node {node.node_name} (models warm)" in log, log

    pulled = events(node, namespace, "involvedObject.name=server,reason=Pulled")
    assert [e["message"] for e in pulled] == [f'Container image "{model.ref}" already present on machine']
    assert not events(node, namespace, "involvedObject.name=server,reason=Pulling")
    about = events(node, namespace, "involvedObject.kind=InferenceService,involvedObject.name=llm")
    prefetched = [e for e in about if e["reason"] != "ModelWarmth"]
    assert [e["reason"] for e in prefetched] == ["Prefetched"], about
    assert model.ref in prefetched[0]["message"]
    summary = json.loads(node.node()["metadata"]["annotations"][SUMMARY])
    assert (summary["warm"], summary["pulling"], summary["lastError"]) == (1, 0, ""), summary
    assert summary["managedBytes"] >= model.size_bytes, summary
    # The same moment as a Node condition, admitted by deploy/agent/node-policy.yaml.
    warm = condition(node.node(), "modelcar-prefetcher.io/ModelsWarm")
    assert (warm.get("status"), warm.get("reason")) == ("True", "ModelsWarm"), warm
    assert "after-pass hook failed" not in log, log
