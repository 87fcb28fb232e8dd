"""The kustomize manifests under deploy/: rendered with ``kubectl kustomize`` and checked for the
properties that matter at install time (config that loads, least-privilege RBAC, a locked-down pod
that can still reach the CRI socket and answer its probes)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from prefetcher.cli import _parser
from prefetcher.config import Config, KubernetesConfig, load_config, load_models, reference_table
from tests.support.manifests import one, render

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
STARTUP_TAINT = "modelcar-prefetcher.io/warming"


@pytest.fixture(scope="module")
def agent() -> list[dict[str, Any]]:
    return render(DEPLOY / "agent")


@pytest.fixture(scope="module")
def config_data(agent: list[dict[str, Any]]) -> dict[str, str]:
    configmap = one(agent, "ConfigMap")
    assert configmap["metadata"]["name"] == "modelcar-prefetcher-config"
    data: dict[str, str] = configmap["data"]
    return data


@pytest.fixture(scope="module")
def pod(agent: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(agent, "DaemonSet")["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    assert len(pod["containers"]) == 1
    only: dict[str, Any] = pod["containers"][0]
    return only


def _flatten(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        if isinstance(value, dict) and value and f"{prefix}{key}" != "kubernetes.nodeSelector":
            keys |= _flatten(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container["volumeMounts"]}


def _volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod["volumes"]}


def test_everything_is_in_the_agent_namespace(agent: list[dict[str, Any]]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for doc in agent:
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == "modelcar-prefetcher", doc["metadata"]["name"]


def test_agent_config_loads_as_the_defaults_plus_the_startup_taint(config_data: dict[str, str]) -> None:
    expected = dataclasses.replace(Config(), kubernetes=KubernetesConfig(startup_taint=STARTUP_TAINT))
    assert load_config(config_data["agent.yaml"]) == expected


def test_agent_config_names_every_key_of_the_reference(config_data: dict[str, str]) -> None:
    reference = set(re.findall(r"^\| `([^`]+)` \|", reference_table(), flags=re.MULTILINE))
    assert reference, "the reference table has no keys"
    assert _flatten(yaml.safe_load(config_data["agent.yaml"])) == reference


def test_models_file_loads_empty(config_data: dict[str, str]) -> None:
    assert load_models(config_data["models.yaml"]) == ()


def test_cluster_role_is_least_privilege(agent: list[dict[str, Any]]) -> None:
    rules = one(agent, "ClusterRole")["rules"]
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"secrets", "serviceaccounts"} & set(rule["resources"]), rule
        assert not {"delete", "deletecollection", "update", "escalate", "bind", "impersonate"} & set(
            rule["verbs"]
        ), rule
    granted = {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert ("", "nodes", "patch") in granted
    assert ("serving.kserve.io", "inferenceservices", "watch") in granted
    assert not any(r == "inferenceservices" and v not in {"get", "list", "watch"} for _, r, v in granted)


def test_no_role_in_the_base_reads_secrets(agent: list[dict[str, Any]]) -> None:
    for doc in agent:
        if doc["kind"] in {"Role", "ClusterRole"}:
            assert all("secrets" not in rule["resources"] for rule in doc["rules"]), doc["metadata"]["name"]


def test_cluster_role_is_bound_to_the_agent_service_account(
    agent: list[dict[str, Any]], pod: dict[str, Any]
) -> None:
    binding = one(agent, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(agent, "ClusterRole")["metadata"]["name"]
    account = one(agent, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    assert pod["serviceAccountName"] == account["name"]


def test_optional_pull_secrets_role_only_gets() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "agent/optional/pull-secrets-role.yaml").read_text()))
    role = one(docs, "Role")
    assert "namespace" not in role["metadata"], "applied with -n <namespace>, once per namespace"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["serviceaccounts", "secrets"], "verbs": ["get"]}
    ]
    binding = one(docs, "RoleBinding")
    assert binding["subjects"][0]["namespace"] == "modelcar-prefetcher"


def test_daemonset_knows_its_node(container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_daemonset_probes_the_health_endpoints_on_the_listen_port(
    container: dict[str, Any], config_data: dict[str, str]
) -> None:
    port = int(load_config(config_data["agent.yaml"]).listen_address.rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_daemonset_is_locked_down(pod: dict[str, Any], container: dict[str, Any]) -> None:
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security.get("privileged", False) is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"requests", "limits"} <= set(container["resources"])


def test_daemonset_tolerates_gpu_and_startup_taints(pod: dict[str, Any], config_data: dict[str, str]) -> None:
    tolerated = {t["key"] for t in pod["tolerations"] if t.get("operator") == "Exists" and "effect" not in t}
    assert "nvidia.com/gpu" in tolerated
    assert load_config(config_data["agent.yaml"]).kubernetes.startup_taint in tolerated


def test_config_is_a_configmap_volume_so_edits_propagate(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    mount = _mounts(container)["config"]
    assert "subPath" not in mount and mount["mountPath"] == "/etc/modelcar-prefetcher"
    assert _volumes(pod)["config"]["configMap"]["name"] == "modelcar-prefetcher-config"
    assert "--config=/etc/modelcar-prefetcher/agent.yaml" in container["args"]
    assert "--models=/etc/modelcar-prefetcher/models.yaml" in container["args"]


def test_the_daemonset_follows_inferenceservices_and_the_models_file(container: dict[str, Any]) -> None:
    args = _parser().parse_args(container["args"])
    assert args.inferenceservices, "with --models alone the agent would ignore InferenceServices"
    assert args.models == Path("/etc/modelcar-prefetcher/models.yaml")


def test_host_paths_match_the_config(
    pod: dict[str, Any], container: dict[str, Any], config_data: dict[str, str]
) -> None:
    cfg = load_config(config_data["agent.yaml"])
    mounts, volumes = _mounts(container), _volumes(pod)
    host = {name: v["hostPath"]["path"] for name, v in volumes.items() if "hostPath" in v}
    # The image filesystem is measured through an empty directory of the agent's own on it,
    # mounted where imageFsPath points: the image store's contents are not mounted.
    statfs = f"{cfg.image_fs_path}/modelcar-prefetcher-statfs"
    assert host == {
        "cri-socket": "/run/containerd",
        "image-fs": statfs,
        "state": str(PurePosixPath(cfg.state_file).parent),
    }
    assert volumes["image-fs"]["hostPath"]["type"] == "DirectoryOrCreate"
    for name, path in host.items():
        assert mounts[name]["mountPath"] == (cfg.image_fs_path if name == "image-fs" else path)
    assert mounts["cri-socket"]["readOnly"] is True
    assert mounts["image-fs"]["readOnly"] is True
    assert not mounts["state"].get("readOnly", False)


def test_monitoring_scrapes_the_metrics_port() -> None:
    docs = render(DEPLOY / "agent/monitoring")
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["name"] == "metrics"
    assert service["spec"]["ports"][0]["port"] == 8080
    monitor = one(docs, "ServiceMonitor", "modelcar-prefetcher")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # The alerts name the agent's job; the ServiceMonitor takes it from the Service's label.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "modelcar-prefetcher-agent"
    webhook = one(docs, "ServiceMonitor", "modelcar-prefetcher-webhook")
    assert webhook["spec"]["endpoints"][0]["scheme"] == "https"


def test_top_level_kustomization_renders_the_agent() -> None:
    docs = render(DEPLOY)
    assert one(docs, "DaemonSet")["metadata"]["name"] == "modelcar-prefetcher"
