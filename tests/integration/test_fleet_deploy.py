"""Three real nodes, the agent installed from ``deploy/agent`` on each: turns taken, the origin serves once.

The fleet of ``test_fleet_pull`` (three kubelet nodes of the test cluster, the origin registry
behind the counting front, Distribution's pull-through cache as every node's containerd mirror,
``tests.support.fleet``), with the agent deployed as an operator deploys it instead of run as a
process: each node gets a kustomize overlay of ``deploy/agent`` (``tests.support.agent_deploy``)
with the overrides ``test_deploy_cluster`` documents and checks, and two more for several nodes
of a shared test cluster:

* The DaemonSet and its ConfigMap carry the node's name as a suffix. Each node's ConfigMap differs
  in its port, so it needs a name of its own; the DaemonSet pins its node. The namespace,
  ServiceAccount, RBAC and node policy are the shipped ones, shared, so the three agents' pacing
  Leases coordinate in ``modelcar-prefetcher`` exactly as in a cluster with one DaemonSet.
* ``kubernetes.namespaces`` names this module's namespace: other tests' InferenceServices are in
  the same cluster, and following them would put their models in these nodes' pull slots
  (``pull.concurrency``) and summaries, making what is observed here depend on test order.

The ``fleet:`` settings are the shipped ConfigMap's: pacing on, one seed pull.

One InferenceService wants a small modelcar pushed to the origin. While the origin holds the model
layer's body (``TrafficCounter.hold``), the seed pull cannot end: one node holds the model's first
slot and pulls, and the other two are seen waiting for the seed, in their node summaries and in
``prefetcher status``. Once released, every node gets the model warm, ``prefetcher status -o json``
(run as a command) says so for 3 of 3 nodes, and the origin served the layer in a single miss of the
cache (``MISS_TRANSFERS``), none of it to containerd directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefetcher.adapters.cri import CriImageRuntime
from tests.support.agent_deploy import (
    BASE,
    IMAGE_FS_MB,
    NAMESPACE,
    OVERRIDES,
    SUMMARY,
    changed,
    installed,
    new_namespace,
    ready_agent,
    write_overlay,
)
from tests.support.agent_image import AgentImage
from tests.support.cluster import Cluster
from tests.support.fleet import Fleet, cluster_status, fleet_nodes, slot_holder
from tests.support.kube_objects import apply_isvc
from tests.support.manifests import one, render
from tests.support.mirror import MISS_TRANSFERS
from tests.support.oci import push_modelcar
from tests.support.polling import eventually
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration
NODES = 3
MODEL_BYTES = 4 * 1024**2
# Agent images pulled on three nodes at once, then a waiting node's next look (fleet.pollSeconds 10).
FLEET_TIMEOUT_SECONDS = 240.0
# The two objects each node's install names for itself; the rest is shared and shipped as is.
RENAMED = ("DaemonSet", "ConfigMap")
# What renaming changes in the DaemonSet besides its name: the ConfigMap it mounts.
RENAME_OVERRIDES = frozenset({"metadata.name", "spec.template.spec.volumes.config.configMap.name"})


@pytest.fixture(scope="module")
def fleet(
    cluster: Cluster, registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """Three Ready nodes, room for the agent image on each, pulling the origin through the mirror."""
    with fleet_nodes(
        cluster,
        registry,
        tmp_path_factory.mktemp("fleet-deploy"),
        count=NODES,
        image_fs_mb=IMAGE_FS_MB,
        rate_bytes_per_second=None,
    ) as fleet:
        fleet.route(fleet.registries.mirror.host)
        yield fleet


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> str:
    """The namespace of this module's InferenceServices, the only one the agents follow."""
    return new_namespace(cluster)


@pytest.fixture(scope="module")
def overlays(
    fleet: Fleet, namespace: str, agent_image: AgentImage, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Per node name, its install: ``deploy/agent`` with the test overrides and names of its own."""
    workdir = tmp_path_factory.mktemp("fleet-overlays")
    return {
        node.node_name: write_overlay(
            workdir / f"overlay-{i}",
            node,
            image=agent_image,
            registry_host=fleet.registries.host,
            state_dir=workdir / f"state-{i}",
            settings={"  namespaces": f'["{namespace}"]'},
            suffix=f"-{node.node_name}",
        )
        for i, node in enumerate(fleet.nodes)
    }


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def test_each_nodes_install_is_deploy_agent_with_the_documented_overrides_and_its_own_two_names(
    overlays: dict[str, Path],
) -> None:
    base = render(BASE)
    shared = {key(d): d for d in base if d["kind"] not in RENAMED}
    ports = set()
    for node_name, directory in overlays.items():
        overlay = render(directory)
        suffix = f"-{node_name}"
        renamed = [(k, n + suffix if k in RENAMED else n) for k, n in map(key, base)]
        assert [key(d) for d in overlay] == renamed
        # Namespace, ServiceAccount, every Role, binding and the node policy: exactly as shipped.
        assert {key(d): d for d in overlay if d["kind"] not in RENAMED} == shared
        daemonset = one(overlay, "DaemonSet")
        assert changed(one(base, "DaemonSet"), daemonset) == OVERRIDES | RENAME_OVERRIDES
        assert daemonset["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"] == node_name
        config = one(overlay, "ConfigMap")
        assert config["metadata"]["name"] == f"modelcar-prefetcher-config{suffix}"
        assert any(
            v.get("configMap", {}).get("name") == config["metadata"]["name"]
            for v in daemonset["spec"]["template"]["spec"]["volumes"]
        )
        shipped, edited = one(base, "ConfigMap")["data"], config["data"]
        assert shipped["models.yaml"] == edited["models.yaml"]
        settings = yaml.safe_load(edited["agent.yaml"])
        assert changed(yaml.safe_load(shipped["agent.yaml"]), settings) == {
            "listenAddress",
            "registries.insecure.0",
            "kubernetes.namespaces.0",
        }
        # Pacing as shipped: one seed pull while no node holds a model warm.
        assert (settings["fleet"]["pacing"], settings["fleet"]["seedPulls"]) == (True, 1)
        ports.add(settings["listenAddress"])
    assert len(ports) == NODES, ports


def model_row(kubeconfig: Path, namespace: str, ref: str) -> dict[str, Any] | None:
    """The model's row of ``prefetcher status -n namespace -o json``, or None before any node reports it."""
    doc = json.loads(cluster_status(kubeconfig, "-n", namespace, "-o", "json"))
    rows = [m for m in doc["models"] if m["model"] == ref]
    return rows[0] if rows else None


def summary(fleet: Fleet, node_name: str) -> dict[str, Any]:
    node = next(n for n in fleet.nodes if n.node_name == node_name)
    found: dict[str, Any] = json.loads(node.node()["metadata"].get("annotations", {}).get(SUMMARY, "{}"))
    return found


@pytest.mark.usefixtures("cluster_isvc_crd", "service_route")
def test_installed_on_three_nodes_one_seeds_alone_and_the_origin_serves_the_model_in_one_cache_miss(
    cluster: Cluster, fleet: Fleet, namespace: str, overlays: dict[str, Path]
) -> None:
    registries, apiserver = fleet.registries, cluster.apiserver
    image = push_modelcar(registries.origin, "models/fleet-deployed", model_size_bytes=MODEL_BYTES, seed=1215)
    ref, layer, counter = registries.ref(image), image.layer_digests[-1], registries.front.counter
    names = sorted(n.node_name for n in fleet.nodes)
    with ExitStack() as stack:
        for node in fleet.nodes:
            stack.enter_context(installed(node, overlays[node.node_name]))
        agents = {node.node_name: ready_agent(node)["metadata"]["name"] for node in fleet.nodes}

        def logs() -> str:
            tails = [(n.node_name, n.pod_logs(NAMESPACE, agents[n.node_name], "agent")) for n in fleet.nodes]
            return "\n".join(f"--- agent on {name} ---\n{text[-3000:]}" for name, text in tails)

        release = counter.hold(layer)
        stack.callback(release.set)  # before the uninstall, should the test fail while holding
        predictor = {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": f"oci://{ref}"}}
        apply_isvc(apiserver, namespace, "llm", predictor)

        # The seed pull cannot end while the origin holds the layer: whoever took the slot pulls,
        # and the other nodes must be seen waiting for it. A node that lost the race to create the
        # slot is reported waiting for "concurrency" until its next pass (resyncSeconds), which
        # finds the slot held and waits "paced" from then on: wait for that.
        def seeding() -> tuple[str, dict[str, Any]] | None:
            holder = slot_holder(apiserver, NAMESPACE, image.digest)
            row = model_row(apiserver.kubeconfig, namespace, ref)
            if not holder or row is None:
                return None
            others = [n for n in names if n != holder]
            alone = row["pulling"] == [holder] and sorted(row["waiting"]) == others
            return (holder, row) if alone and row["reasons"] == {"paced": NODES - 1} else None

        try:
            holder, row = eventually(
                seeding, what="one node pulling, the others waiting", timeout_seconds=FLEET_TIMEOUT_SECONDS
            )
        except AssertionError as err:
            raise AssertionError(f"{err}\n{counter.blob(layer)}\n{logs()}") from None
        waiters = [n for n in names if n != holder]
        # Each waiting node's own summary gives the reason: no node holds the model warm yet.
        for name in waiters:
            assert "seed" in summary(fleet, name)["pacing"]["waiting"], summary(fleet, name)
        held = counter.blob(layer)
        assert held.bytes_sent == 0 and held.gets <= MISS_TRANSFERS, held
        release.set()

        def warm_on() -> list[str]:
            found = []
            for node in fleet.nodes:
                with CriImageRuntime(node.endpoint) as runtime:
                    if runtime.image_status(ref) is not None:
                        found.append(node.node_name)
            return sorted(found)

        try:
            eventually(
                warm_on,
                until=lambda w: w == names,
                what=f"{ref} on every node",
                timeout_seconds=FLEET_TIMEOUT_SECONDS,
            )
            row = eventually(
                lambda: model_row(apiserver.kubeconfig, namespace, ref),
                until=lambda r: sorted(r["warm"]) == names,
                what="prefetcher status reporting the model warm on every node",
                timeout_seconds=FLEET_TIMEOUT_SECONDS,
            )
        except AssertionError as err:
            raise AssertionError(f"{err}\n{counter.blob(layer)}\n{logs()}") from None
        log = {n.node_name: n.pod_logs(NAMESPACE, agents[n.node_name], "agent") for n in fleet.nodes}

    everything = "\n".join(log.values())
    assert "fleet pacing:" not in everything, "pacing failed open"
    waited = sorted(n for n, text in log.items() if f"waiting for a turn to pull {ref} (seed)" in text)
    assert waited == waiters, everything
    assert (row["fits"], row["pulling"], row["waiting"], row["skipped"]) == (NODES, [], [], []), row
    doc = json.loads(cluster_status(apiserver.kubeconfig, "-n", namespace, "-o", "json"))
    assert doc["inferenceServices"] == [
        {"name": f"{namespace}/llm", "warmNodes": NODES, "eligibleNodes": NODES}
    ], doc
    traffic = counter.blob(layer)
    assert dict(traffic.by_agent) == {"go-http-client": MISS_TRANSFERS}, (traffic, everything)
    assert traffic.bytes_sent == MISS_TRANSFERS * registries.stored_bytes(layer)
