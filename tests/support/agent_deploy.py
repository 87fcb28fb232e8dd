"""Test support: the agent installed from ``deploy/agent`` onto a real test node.

``write_overlay`` writes a kustomize overlay whose only resource is the repository's
``deploy/agent``, with the agent image built from this tree (by digest) and only what this test
environment forces (``tests/integration/test_deploy_cluster.py`` lists and checks each override);
``installed`` applies it with ``kubectl apply -k`` and deletes it afterwards. ``overlay_for`` is the
fixture that writes one for a node, with the API server reachable in-cluster (``service_route``).

Several nodes of one cluster each get an overlay of their own with a ``suffix``: it renames only the
DaemonSet and its ConfigMap (each node's ConfigMap differs in its port), so every install shares the
shipped namespace, ServiceAccount, RBAC and node policy unchanged: the policy matches the
ServiceAccount by name, and the agents' Leases coordinate in that one namespace.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.agent_image import AgentImage
from tests.support.cluster import Cluster
from tests.support.kserve import install_isvc_crd
from tests.support.kubelet import Taint
from tests.support.manifests import flatten
from tests.support.node import NodeCluster
from tests.support.registry import RunningRegistry, free_port
from tests.support.service_route import ServiceRoute

BASE = Path(__file__).resolve().parents[2] / "deploy" / "agent"
NAMESPACE = "modelcar-prefetcher"
NAME = "modelcar-prefetcher"
SELECTOR = "app.kubernetes.io/name=modelcar-prefetcher,app.kubernetes.io/component=agent"
SUMMARY = "modelcar-prefetcher.io/summary"
STARTUP_TAINT = Taint("modelcar-prefetcher.io/warming", "", "NoSchedule")
# Pulling the agent image into a fresh node and starting Python and the Kubernetes client.
AGENT_READY_TIMEOUT_SECONDS = 120.0
MIB = 1024**2
# The agent image's layers (about 80 MB compressed) and their unpacked snapshot do not fit the
# default 300 MiB image filesystem.
IMAGE_FS_MB = 1024
OverlayFor = Callable[..., Path]
# The DaemonSet fields an overlay changes (list items by name, see ``manifests.flatten``).
OVERRIDES = frozenset(
    {
        "spec.template.spec.hostNetwork",
        "spec.template.spec.dnsPolicy",
        "spec.template.spec.nodeSelector.kubernetes.io/hostname",
        "spec.template.spec.containers.agent.image",
        "spec.template.spec.containers.agent.ports.metrics.containerPort",
        "spec.template.spec.volumes.cri-socket.hostPath.path",
        "spec.template.spec.volumes.image-fs.hostPath.path",
        "spec.template.spec.volumes.state.hostPath.path",
    }
)


def changed(base: dict[str, Any], overlay: dict[str, Any]) -> set[str]:
    """Paths whose value differs, added or removed between two objects."""
    before, after = flatten(base), flatten(overlay)
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


def edit_agent_yaml(
    shipped: str, *, registry_host: str, port: int, settings: Mapping[str, str] | None = None
) -> str:
    """The shipped ``agent.yaml`` with the two values this environment needs, comments kept.

    ``settings`` maps further indented lines (``"  graceSeconds"``) to the value a test wants.
    """
    edits = {
        r'^listenAddress: "0\.0\.0\.0:8080"': f'listenAddress: "0.0.0.0:{port}"',
        r"^  insecure: \[\]": f'  insecure: ["{registry_host}"]',
    }
    for key, value in (settings or {}).items():
        edits[rf"^{re.escape(key)}: [^#\n]*?(?= *#|$)"] = f"{key}: {value}"
    for pattern, value in edits.items():
        shipped, count = re.subn(pattern, value, shipped, flags=re.MULTILINE)
        assert count == 1, f"deploy/agent/agent.yaml no longer has {pattern!r}"
    return shipped


def write_overlay(
    directory: Path,
    node: NodeCluster,
    *,
    image: AgentImage,
    registry_host: str,
    state_dir: Path,
    settings: Mapping[str, str] | None = None,
    suffix: str = "",
) -> Path:
    """``directory``: a kustomization over ``deploy/agent`` with the image and the forced overrides.

    ``suffix`` is appended to the names of the DaemonSet and the ConfigMap, and nothing else.
    """
    directory.mkdir(parents=True)
    port = free_port()
    shipped = (BASE / "agent.yaml").read_text()
    (directory / "agent.yaml").write_text(
        edit_agent_yaml(shipped, registry_host=registry_host, port=port, settings=settings)
    )
    volumes = {
        "cri-socket": node.containerd.socket.parent,  # holds containerd.sock, as /run/containerd does
        # An empty directory of the agent's own on the node's ext4 image filesystem, as shipped.
        "image-fs": node.containerd.root / "modelcar-prefetcher-statfs",
        "state": state_dir,
    }
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "template": {
                "spec": {
                    "hostNetwork": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "nodeSelector": {"kubernetes.io/hostname": node.node_name},
                    "volumes": [{"name": k, "hostPath": {"path": str(v)}} for k, v in volumes.items()],
                }
            }
        },
    }
    # The ports list merges by containerPort: a strategic merge would add a port, not change it.
    port_patch = [
        {"op": "replace", "path": "/spec/template/spec/containers/0/ports/0/containerPort", "value": port}
    ]
    repository, _, digest = image.ref.partition("@")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(BASE, directory)],
        "images": [{"name": "modelcar-prefetcher", "newName": repository, "digest": digest}],
        "configMapGenerator": [
            {
                "name": "modelcar-prefetcher-config",
                "namespace": NAMESPACE,
                "behavior": "merge",
                "files": ["agent.yaml"],
            }
        ],
        "patches": [
            {"patch": yaml.safe_dump(daemonset)},
            {"target": {"kind": "DaemonSet", "name": NAME}, "patch": yaml.safe_dump(port_patch)},
        ],
    }
    comments = (
        "# deploy/agent with this tree's agent image and what the test environment forces:\n"
        "# host networking (no CNI); a free metrics port (the machine's ports are shared); this\n"
        "# node's containerd socket directory, image filesystem and a state directory of its own\n"
        "# (nodes share the machine); pinned to this node; the plain-HTTP registry in agent.yaml.\n"
    )
    if suffix:
        # The builtin transformer, limited to two kinds: `nameSuffix` would rename the ServiceAccount
        # too, which the node policy matches by name. References (the config volume) follow.
        renamer = {
            "apiVersion": "builtin",
            "kind": "PrefixSuffixTransformer",
            "metadata": {"name": "per-node-names"},
            "suffix": suffix,
            "fieldSpecs": [{"kind": k, "path": "metadata/name"} for k in ("DaemonSet", "ConfigMap")],
        }
        (directory / "per-node-names.yaml").write_text(yaml.safe_dump(renamer, sort_keys=False))
        kustomization["transformers"] = ["per-node-names.yaml"]
        comments += "# Several nodes' installs side by side: this node's DaemonSet and ConfigMap names.\n"
    (directory / "kustomization.yaml").write_text(comments + yaml.safe_dump(kustomization, sort_keys=False))
    return directory


@contextmanager
def installed(node: NodeCluster, overlay: Path) -> Iterator[None]:
    """``kubectl apply -k`` the overlay; ``kubectl delete -k`` it afterwards while the node runs."""
    node.kubectl("apply", "-k", str(overlay))
    try:
        yield
    finally:
        # The agent stops on SIGTERM; waiting lets the next install recreate the namespace.
        node.kubectl("delete", "-k", str(overlay), "--ignore-not-found", "--wait=true", "--timeout=90s")


def agent_pod(node: NodeCluster) -> dict[str, Any]:
    """The DaemonSet's pod on ``node``, once it exists."""

    def created() -> dict[str, Any] | None:
        pods = node.get(
            "pods", "-n", NAMESPACE, "-l", SELECTOR, f"--field-selector=spec.nodeName={node.node_name}"
        )
        return pods["items"][0] if pods["items"] else None

    return node.wait_for(created, what=f"the DaemonSet's pod on {node.node_name}")


def running(node: NodeCluster, agent: str) -> bool:
    """True once the agent's container has started (before it is Ready)."""
    statuses = node.get("pod", "-n", NAMESPACE, agent)["status"].get("containerStatuses", [])
    return any("running" in status["state"] for status in statuses)


def ready_agent(node: NodeCluster) -> dict[str, Any]:
    """The agent's pod once Ready: ``/readyz`` answered after a pass that reached containerd."""
    name = agent_pod(node)["metadata"]["name"]
    return node.wait_pod_ready(NAMESPACE, name, timeout_seconds=AGENT_READY_TIMEOUT_SECONDS)


def new_namespace(cluster: Cluster) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    return name


def apply(node: NodeCluster, obj: dict[str, Any]) -> None:
    node.kubectl("apply", "-f", "-", input=json.dumps(obj))


def timestamp(value: str) -> float:
    """Seconds since the epoch of an RFC 3339 time as the API server writes it."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def cluster_isvc_crd(cluster: Cluster) -> str:
    """KServe's InferenceService CRD in the cluster fixture's API server."""
    return install_isvc_crd(cluster.apiserver)


@pytest.fixture
def overlay_for(
    agent_image: AgentImage,
    registry: RunningRegistry,
    service_route: ServiceRoute,
    cluster_isvc_crd: str,
    tmp_path: Path,
) -> OverlayFor:
    """``overlay_for(node, settings)``: the install for ``node``, the API server reachable in-cluster."""

    def write(node: NodeCluster, settings: Mapping[str, str] | None = None) -> Path:
        directory = tmp_path / f"overlay-{node.node_name}"
        state = tmp_path / f"state-{node.node_name}"
        return write_overlay(
            directory,
            node,
            image=agent_image,
            registry_host=registry.host,
            state_dir=state,
            settings=settings,
        )

    return write


def events(node: NodeCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = node.get("events", "-n", namespace, f"--field-selector={selector}")["items"]
    return items
