"""The Helm chart installed, upgraded and uninstalled with the real helm on the real test cluster.

One release goes through an operator's whole life cycle on a real kubelet node: ``helm install``
(the agent Ready, warming the model of an InferenceService and reporting the models-warm Node
condition; the webhook wiring a pod the API server admits), a scrape of the running agent and
webhook for every metric the alert rules and dashboard name, ``helm upgrade`` with a new budget
that the running agent applies without a restart, and ``helm uninstall`` leaving no object behind.

Values set only because of this test environment, each for the same reason as in
``test_deploy_cluster.py``: host networking for both workloads (no CNI), free ports (the machine's
ports are shared), the node's own containerd socket directory, image filesystem and a state
directory, a ``kubernetes.io/hostname`` node selector, the plain-HTTP test registry, and one webhook
replica (two on one host network would want one port). The API server calls the webhook through
its Service, as in a cluster: ``service_route.forward`` stands in for kube-proxy for that ClusterIP.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.agent_deploy import (
    AGENT_READY_TIMEOUT_SECONDS,
    IMAGE_FS_MB,
    MIB,
    new_namespace,
    ready_agent,
)
from tests.support.agent_image import AgentImage
from tests.support.cluster import NodeClusterFactory
from tests.support.helm import CHART, NAMESPACE, RELEASE, run, values_file
from tests.support.kube_objects import apply_isvc
from tests.support.node import NodeCluster, condition
from tests.support.oci import push_modelcar
from tests.support.registry import RunningRegistry, free_port
from tests.support.service_route import ServiceRoute

pytestmark = pytest.mark.integration

CONDITION = "modelcar-prefetcher.io/ModelsWarm"
WEBHOOK = "modelcar-prefetcher-webhook"
WEBHOOK_NAMESPACE = "modelcar-prefetcher-webhook"


def test_install_warm_wire_scrape_upgrade_uninstall(  # noqa: PLR0917 (fixtures)
    node_cluster_factory: NodeClusterFactory,
    agent_image: AgentImage,
    registry: RunningRegistry,
    service_route: ServiceRoute,
    cluster_isvc_crd: str,
    tmp_path: Path,
) -> None:
    node = node_cluster_factory(image_fs_mb=IMAGE_FS_MB)
    model = push_modelcar(registry, "models/chart", model_size_bytes=4 * MIB, seed=13)
    namespace = new_namespace(node.cluster)
    predictor = {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": model.uri}}
    apply_isvc(node.apiserver, namespace, "llm", predictor)
    agent_port, webhook_port = free_port(), free_port()
    values = environment_values(
        node, agent_image, registry, tmp_path, agent_port=agent_port, webhook_port=webhook_port
    )
    helm = Helm(node, tmp_path)
    before = inventory(node)
    # The chart's webhook namespace enforces Pod Security "restricted", which forbids the host
    # network this environment needs: the test brings the namespace, privileged, instead.
    privileged = {"pod-security.kubernetes.io/enforce": "privileged"}
    webhook_ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": WEBHOOK_NAMESPACE}}
    webhook_ns["metadata"]["labels"] = privileged  # type: ignore[index]
    node.kubectl("apply", "-f", "-", input=json.dumps(webhook_ns))

    with helm.installed(values_file(tmp_path, values)):
        agent = ready_agent(node)
        summary = node.wait_for(
            lambda: warm_summary(node), what="the agent's summary with the InferenceService's model warm"
        )
        assert summary["lastError"] == "", summary
        warm = condition(node.node(), CONDITION)
        assert (warm["status"], warm["reason"], warm["message"]) == (
            "True",
            "ModelsWarm",
            "1 warm, 0 pulling, 0 skipped",
        ), warm
        assert condition(node.node(), "Ready")["status"] == "True", "kubelet's own conditions are untouched"
        log = node.pod_logs(NAMESPACE, agent["metadata"]["name"], "agent")
        marker = f"condition {CONDITION} is "
        went = [line.split(marker, 1)[1] for line in log.splitlines() if marker in line]
        # False while the model was pulled, then True; an Unknown before them is a first pass that
        # ran before the InferenceServices were listed.
        assert [state.split(" ")[0] for state in went][-2:] == ["False", "True"], log
        assert went[-2].startswith("False (Pulling: 0 warm, 1 pulling"), went

        cluster_ip = node.get("service", "-n", WEBHOOK_NAMESPACE, WEBHOOK)["spec"]["clusterIP"]
        with service_route.forward(cluster_ip, 443, webhook_port):
            wired = create_wired_pod(node, namespace, model.uri)
        names = [c["name"] for c in wired["spec"].get("initContainers", []) + wired["spec"]["containers"]]
        assert "modelcar" in names and "modelcar-init" in names, names
        assert wired["spec"]["shareProcessNamespace"] is True

        ca = node.get("secret", "-n", WEBHOOK_NAMESPACE, f"{WEBHOOK}-tls")["data"]
        exported = scrape(f"http://127.0.0.1:{agent_port}/metrics") | scrape(
            f"https://127.0.0.1:{webhook_port}/metrics", ca_b64=ca["ca.crt"]
        )
        named = metric_names()
        assert named - exported == set(), sorted(named - exported)

        # helm upgrade: the budget changes in the ConfigMap, the running agent applies it.
        helm.upgrade("--set", "config.budget.maxUsagePercent=50")
        after = node.wait_for(
            lambda: budget_applied(agent_port, 0.5), what="the agent's budget at 50 % after helm upgrade"
        )
        assert after["prefetcher_config_reloads_total"] >= 1, after
        pod = node.get("pod", "-n", NAMESPACE, agent["metadata"]["name"])
        assert pod["metadata"]["uid"] == agent["metadata"]["uid"], "the agent was not replaced"
        assert [s["restartCount"] for s in pod["status"]["containerStatuses"]] == [0]
        kept = node.get("secret", "-n", WEBHOOK_NAMESPACE, f"{WEBHOOK}-tls")["data"]
        assert kept == ca, "certificates are kept across upgrades"

    # Pods go after their owners, by the garbage collector: poll for the namespaces to empty.
    node.wait_for(lambda: inventory(node) == before, what="nothing left of the release after helm uninstall")
    assert all(not names for names in before.values()), before
    node.kubectl("delete", "namespace", WEBHOOK_NAMESPACE, "--wait=false")
    # Agents of later tests follow every InferenceService of the session's cluster: leave none.
    node.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=120s")


def environment_values(
    node: NodeCluster,
    image: AgentImage,
    registry: RunningRegistry,
    tmp_path: Path,
    *,
    agent_port: int,
    webhook_port: int,
) -> dict[str, Any]:
    """The values this environment forces (see the module docstring), nothing else."""
    on_node = {"kubernetes.io/hostname": node.node_name}
    repository, _, digest = image.ref.partition("@")
    return {
        "image": {"repository": repository, "digest": digest},
        "hostNetwork": True,
        "nodeSelector": on_node,
        "hostPaths": {
            "criSocketDir": str(node.containerd.socket.parent),
            "imageFs": str(node.containerd.root / "modelcar-prefetcher-statfs"),
            "stateDir": str(tmp_path / "state"),
        },
        "config": {
            "listenAddress": f"0.0.0.0:{agent_port}",
            "registries": {"insecure": [registry.host]},
            # Not forced: a shorter pass interval so that the upgrade is seen sooner.
            "resyncSeconds": 5.0,
        },
        "webhook": {
            "hostNetwork": True,
            "createNamespace": False,
            "port": webhook_port,
            "replicas": 1,
            "nodeSelector": on_node,
        },
    }


class Helm:
    """The built helm against the test cluster, with its own cache and config directories."""

    def __init__(self, node: NodeCluster, tmp_path: Path) -> None:
        self.node = node
        home = tmp_path / "helm-home"
        self.env = os.environ | {
            "KUBECONFIG": str(node.apiserver.kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str) -> str:
        result = run("helm", *args, "--namespace", NAMESPACE, env=self.env)
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}\n{self.node.log_tails()}"
        return result.stdout

    @contextmanager
    def installed(self, values: Path) -> Iterator[None]:
        """``helm install --wait``; ``helm uninstall --wait`` afterwards, whatever happened."""
        wait = ("--wait", f"--timeout={int(AGENT_READY_TIMEOUT_SECONDS * 2)}s")
        self("install", RELEASE, str(CHART), "--create-namespace", "--values", str(values), *wait)
        try:
            yield
        finally:
            self("uninstall", RELEASE, "--wait", "--timeout=120s")

    def upgrade(self, *args: str) -> None:
        self("upgrade", RELEASE, str(CHART), "--reuse-values", "--wait", "--timeout=120s", *args)


def warm_summary(node: NodeCluster) -> dict[str, Any] | None:
    text = node.node()["metadata"].get("annotations", {}).get("modelcar-prefetcher.io/summary")
    summary: dict[str, Any] | None = json.loads(text) if text else None
    return summary if summary and summary["warm"] == 1 and summary["pulling"] == 0 else None


def create_wired_pod(node: NodeCluster, namespace: str, model_uri: str) -> dict[str, Any]:
    """A pod that opts in to wiring, as the API server stored it after the webhook."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "wired",
            "namespace": namespace,
            "labels": {"modelcar-prefetcher.io/inject": "true"},
            "annotations": {
                "modelcar-prefetcher.io/model-uri": model_uri,
                "modelcar-prefetcher.io/container": "server",
            },
        },
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "no-such-node"},  # stored, never run
            "containers": [{"name": "server", "image": "busybox", "command": ["sleep", "1"]}],
        },
    }
    created: dict[str, Any] = json.loads(
        node.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(pod))
    )
    return created


def scrape(url: str, *, ca_b64: str | None = None) -> set[str]:
    """Every metric name the endpoint exports, as a query names it (``_total``, ``_bucket``…)."""
    context = None
    if ca_b64 is not None:
        context = ssl.create_default_context(cadata=base64.b64decode(ca_b64).decode())
        context.check_hostname = False  # the certificate names the Service, not 127.0.0.1
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        text = response.read().decode()
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def metric_names() -> set[str]:
    """The project's metric names the alert rules and the dashboard use."""
    rules = (CHART / "files" / "prometheus-rules.yaml").read_text()
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    exprs = [r["expr"] for g in yaml.safe_load(rules)["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    found = {name for expr in exprs for name in re.findall(r"\bprefetcher_[a-z0-9_]+", expr)}
    assert len(found) > 10, found
    return found


def budget_applied(port: int, fraction: float) -> dict[str, float] | None:
    """The agent's gauges once its budget is ``fraction`` of the image filesystem."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            reload = sample.name == "prefetcher_config_reloads_total"
            if (reload and sample.labels["outcome"] == "success") or not sample.labels:
                values[sample.name] = sample.value
    values.setdefault("prefetcher_config_reloads_total", 0.0)
    capacity = values.get("prefetcher_image_fs_capacity_bytes", 0.0)
    if not capacity or abs(values["prefetcher_budget_bytes"] / capacity - fraction) > 0.001:
        return None
    return values


def inventory(node: NodeCluster) -> dict[str, list[str]]:
    """Names of what a release could leave: objects in its namespaces and cluster-wide ones.

    A namespace's own ``default`` ServiceAccount and ``kube-root-ca.crt`` are not the release's.
    """
    found: dict[str, list[str]] = {}
    namespaced = (
        "all,configmaps,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets,networkpolicies"
    )
    cluster_wide = (
        "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,priorityclasses,"
        "validatingadmissionpolicies,validatingadmissionpolicybindings"
    )
    present = node.kubectl("get", "namespaces", "-o", "name").split()
    for namespace in (NAMESPACE, WEBHOOK_NAMESPACE):
        items = node.get(namespaced, "-n", namespace)["items"] if f"namespace/{namespace}" in present else []
        names = {f"{i['kind']}/{i['metadata']['name']}" for i in items}
        found[namespace] = sorted(names - {"ConfigMap/kube-root-ca.crt", "ServiceAccount/default"})
    items = node.get(cluster_wide)["items"]
    ours = [i for i in items if "modelcar-prefetcher" in i["metadata"]["name"]]
    found["cluster"] = sorted(f"{i['kind']}/{i['metadata']['name']}" for i in ours)
    found["released"] = sorted(
        i["metadata"]["name"] for i in node.get("secrets", "-A", "-l", "owner=helm")["items"]
    )
    return found

