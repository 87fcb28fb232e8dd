"""deploy/webhook, rendered with ``kubectl kustomize``: the properties the install relies on."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from prefetcher.webhook.config import WebhookConfig, load_webhook_config
from prefetcher.webhook.server import DRAIN_SECONDS
from tests.support.manifests import one, render

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "webhook"
NAMESPACE = "modelcar-prefetcher-webhook"
SYSTEM_NAMESPACES = {"kube-system", "kube-public", "kube-node-lease", "modelcar-prefetcher", NAMESPACE}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(DEPLOY)


@pytest.fixture(scope="module")
def pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment")
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def test_everything_namespaced_lands_in_the_product_namespace(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] not in ("MutatingWebhookConfiguration", "Namespace", "PriorityClass"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]


def test_two_replicas_spread_and_protected_by_a_pdb(docs: list[dict[str, Any]]) -> None:
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = one(docs, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname"


def test_the_container_runs_the_webhook_with_files_that_exist(
    docs: list[dict[str, Any]], pod: dict[str, Any]
) -> None:
    (container,) = pod["containers"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"][1:])
    assert container["args"][0] == "webhook" and set(flags) == {"config", "cert", "key", "listen"}
    mounts = {m["name"]: PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    configmap = one(docs, "ConfigMap")
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    config_file = PurePosixPath(flags["config"])
    assert config_file.parent == mounts["config"] and config_file.name in configmap["data"]
    for flag, key in (("cert", "tls.crt"), ("key", "tls.key")):
        assert PurePosixPath(flags[flag]) == mounts["tls"] / key
    assert volumes["tls"]["secret"]["secretName"] == "modelcar-prefetcher-webhook-tls"
    assert flags["listen"] == f":{container['ports'][0]['containerPort']}"


def test_shipped_config_is_valid_and_documents_the_defaults(docs: list[dict[str, Any]]) -> None:
    data = one(docs, "ConfigMap")["data"]["webhook.yaml"]
    assert load_webhook_config(data) == WebhookConfig()


def test_probes_use_https_on_the_serving_port(pod: dict[str, Any]) -> None:
    (container,) = pod["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert (get["scheme"], get["path"], get["port"]) == ("HTTPS", "/healthz", "https")


def test_the_pod_is_locked_down(pod: dict[str, Any]) -> None:
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False


def test_service_reaches_the_container(docs: list[dict[str, Any]], pod: dict[str, Any]) -> None:
    service = one(docs, "Service")
    (port,) = service["spec"]["ports"]
    (container,) = pod["containers"]
    assert port["port"] == 443 and port["targetPort"] == container["ports"][0]["name"]
    assert (
        service["spec"]["selector"].items()
        <= one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_webhook_registration(docs: list[dict[str, Any]]) -> None:
    config = one(docs, "MutatingWebhookConfiguration")
    service = one(docs, "Service")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert [w["name"] for w in config["webhooks"]] == [
        "kserve.modelcar-prefetcher.io",
        "pods.modelcar-prefetcher.io",
    ]
    for webhook in config["webhooks"]:
        assert webhook["admissionReviewVersions"] == ["v1"] and webhook["sideEffects"] == "None"
        assert webhook["reinvocationPolicy"] == "IfNeeded" and webhook["failurePolicy"] == "Fail"
        assert 1 <= webhook["timeoutSeconds"] <= 10
        target = webhook["clientConfig"]["service"]
        assert (target["name"], target["namespace"], target["path"]) == (
            service["metadata"]["name"],
            NAMESPACE,
            "/mutate",
        )
        (rule,) = webhook["rules"]
        assert rule["operations"] == ["CREATE"] and rule["resources"] == ["pods"]
        excluded = {
            value
            for expression in webhook["namespaceSelector"]["matchExpressions"]
            if expression["key"] == "kubernetes.io/metadata.name" and expression["operator"] == "NotIn"
            for value in expression["values"]
        }
        assert excluded == SYSTEM_NAMESPACES
        expressions = webhook["objectSelector"]["matchExpressions"]
        assert any(e["operator"] in ("Exists", "In") for e in expressions)
        never_self = [e for e in expressions if e["operator"] == "NotIn"]
        assert any(pod_labels.get(e["key"]) in e["values"] for e in never_self)


def test_cert_manager_overlay_injects_the_ca_of_the_serving_certificate() -> None:
    docs = render(DEPLOY / "cert-manager")
    config = one(docs, "MutatingWebhookConfiguration")
    namespace, name = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    certificate = one(docs, "Certificate", name)
    assert namespace == certificate["metadata"]["namespace"] == NAMESPACE
    deployment = one(docs, "Deployment")
    secrets = [
        v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v
    ]
    assert certificate["spec"]["secretName"] in secrets
    assert f"modelcar-prefetcher-webhook.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    issuer = one(docs, "Issuer", certificate["spec"]["issuerRef"]["name"])
    ca = one(docs, "Certificate", "modelcar-prefetcher-webhook-ca")
    assert issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"] and ca["spec"]["isCA"] is True


def test_the_webhook_namespace_enforces_restricted_and_the_agents_allows_privileged(
    docs: list[dict[str, Any]],
) -> None:
    labels = one(docs, "Namespace")["metadata"]["labels"]
    assert one(docs, "Namespace")["metadata"]["name"] == NAMESPACE
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    agent = next(d for d in render(DEPLOY.parent / "agent") if d["kind"] == "Namespace")
    assert agent["metadata"]["name"] != NAMESPACE
    assert agent["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_only_8443_reaches_the_webhook_and_it_reaches_nothing(docs: list[dict[str, Any]]) -> None:
    policy = one(docs, "NetworkPolicy")["spec"]
    pods = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pods.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["egress"] == []
    assert [rule["ports"] for rule in policy["ingress"]] == [[{"protocol": "TCP", "port": 8443}]]


def test_priority_drain_and_grace_period(docs: list[dict[str, Any]], pod: dict[str, Any]) -> None:
    assert pod["priorityClassName"] == one(docs, "PriorityClass")["metadata"]["name"]
    assert one(docs, "PriorityClass")["value"] < 1_000_000_000  # below the system-* classes
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + DRAIN_SECONDS
