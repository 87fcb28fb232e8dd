"""The Helm chart, rendered by the real helm: lint, schema, values, and no drift from ``deploy/``.

The kustomize tree and the chart are two ways to install the same thing. With default values the
chart renders what ``kubectl kustomize deploy/`` and ``deploy/agent/monitoring`` render, object by
object, except for what only Helm can do (``HELM_ONLY``), what only kustomize does
(``KUSTOMIZE_ONLY``) and Helm's bookkeeping (``normalized``); a change to one side without the
other fails here.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from prefetcher.config import load_config, reference_rows
from prefetcher.errors import ConfigError
from tests.support.helm import CHART, NAMESPACE, REPO, run, template, template_result
from tests.support.manifests import flatten, one, render

pytestmark = pytest.mark.integration

HELM_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
)
# The webhook's certificate and key, which kustomize leaves to hack/webhook-certs.sh or cert-manager.
HELM_ONLY = {("Secret", "modelcar-prefetcher-webhook-tls")}
# Helm charts leave the release's namespace to `helm install --create-namespace` (label it for
# Pod Security "privileged" where that is enforced by default); the webhook's is the chart's.
KUSTOMIZE_ONLY = {("Namespace", "modelcar-prefetcher")}
CLUSTER_SCOPED = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "PriorityClass"}
MONITORING = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
MONITORING |= {"grafanaDashboard": {"enabled": True}}
# Files whose text differs in comments and layout only: compared as parsed YAML.
YAML_DATA = ("agent.yaml", "models.yaml", "webhook.yaml")


def normalized(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without what only tells which tool rendered it."""
    obj = yaml.safe_load(yaml.safe_dump(obj))
    meta = obj["metadata"]
    if obj["kind"] in CLUSTER_SCOPED:  # kustomize sets its namespace on kinds it does not know
        meta.pop("namespace", None)
    for label in HELM_LABELS:
        meta.get("labels", {}).pop(label, None)
    # kustomize hashes the webhook ConfigMap's name; the chart rolls the Deployment by a checksum.
    meta["name"] = re.sub(r"^(modelcar-prefetcher-webhook-config)-[a-z0-9]{10}$", r"\1", meta["name"])
    template = obj.get("spec", {}).get("template", {}).get("metadata", {})
    template.get("annotations", {}).pop("checksum/config", None)
    for volume in obj.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
        if "configMap" in volume:
            volume["configMap"]["name"] = re.sub(r"-[a-z0-9]{10}$", "", volume["configMap"]["name"])
    if obj["kind"] == "MutatingWebhookConfiguration":
        for webhook in obj["webhooks"]:
            webhook["clientConfig"].pop("caBundle", None)  # put there by hack/webhook-certs.sh
    for key in YAML_DATA:
        if key in obj.get("data", {}):
            obj["data"][key] = yaml.safe_load(obj["data"][key])
    return obj


def by_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    objects = [normalized(d) for d in docs]
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    left, right = flatten(a), flatten(b)
    return sorted(
        f"{path}: kustomize {left.get(path)!r} helm {right.get(path)!r}"
        for path in left.keys() | right.keys()
        if left.get(path) != right.get(path)
    )


def test_helm_lint_passes_strictly() -> None:
    for extra in ([], ["--set", "webhook.certificates.source=cert-manager"]):
        result = run("helm", "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *extra)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_chart_with_defaults_renders_what_the_kustomize_tree_renders(tmp_path: Path) -> None:
    kustomize = by_name(render(REPO / "deploy") + render(REPO / "deploy" / "agent" / "monitoring"))
    helm = by_name(template(MONITORING, directory=tmp_path))
    assert set(helm) - set(kustomize) == HELM_ONLY
    assert set(kustomize) - set(helm) == KUSTOMIZE_ONLY
    drift = {key: differences(kustomize[key], helm[key]) for key in set(helm) & set(kustomize)}
    assert {key: lines for key, lines in drift.items() if lines} == {}


def test_the_config_values_hold_every_config_key_and_load_as_the_agent_reads_them(tmp_path: Path) -> None:
    docs = template(directory=tmp_path)
    agent_yaml = one(docs, "ConfigMap", "modelcar-prefetcher-config")["data"]["agent.yaml"]
    reference = {key for key, _default, _doc in reference_rows()}

    def keys(doc: dict[str, Any], prefix: str = "") -> set[str]:
        found = set()
        for key, value in doc.items():
            sections = isinstance(value, dict) and any(r.startswith(f"{prefix}{key}.") for r in reference)
            found |= keys(value, f"{prefix}{key}.") if sections else {prefix + key}
        return found

    assert keys(yaml.safe_load(agent_yaml)) == reference
    load_config(agent_yaml)


def test_changed_values_reach_the_objects_they_govern(tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    values = {
        "fullnameOverride": "mcp",
        "image": {"repository": "registry.example.com/mcp", "digest": digest},
        "imagePullSecrets": [{"name": "regcred"}],
        "tolerations": [{"key": "amd.com/gpu", "operator": "Exists"}],
        "priorityClassName": "gpu-critical",
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
        "config": {"budget": {"maxUsagePercent": 70}, "kubernetes": {"startupTaint": "example.com/cold"}},
        "models": [{"uri": "oci://registry.example.com/m@sha256:" + "cd" * 32, "priority": 5}],
        "webhook": {"enabled": False},
    }
    docs = template(values, directory=tmp_path)
    daemonset = one(docs, "DaemonSet", "mcp")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == f"registry.example.com/mcp@{digest}"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "gpu-critical"
    # The start-up taint the agent removes is always tolerated, whatever else is.
    assert pod["tolerations"] == [
        {"key": "amd.com/gpu", "operator": "Exists"},
        {"key": "example.com/cold", "operator": "Exists"},
    ]
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": "10%"}
    data = one(docs, "ConfigMap", "mcp-config")["data"]
    config = load_config(data["agent.yaml"])
    assert (config.budget.max_usage_percent, config.kubernetes.startup_taint) == (70, "example.com/cold")
    assert config.pull.concurrency == 2, "a value not given keeps its default"
    assert yaml.safe_load(data["models.yaml"]) == {"models": values["models"]}
    assert not [d for d in docs if "webhook" in d["metadata"]["name"]]


def test_helm_generates_a_ca_and_a_serving_certificate_for_the_webhook_service(tmp_path: Path) -> None:
    docs = template(directory=tmp_path)
    secret = one(docs, "Secret", "modelcar-prefetcher-webhook-tls")["data"]
    webhook = one(docs, "MutatingWebhookConfiguration")
    assert {w["clientConfig"]["caBundle"] for w in webhook["webhooks"]} == {secret["ca.crt"]}
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["ca.crt"]))
    served = x509.load_pem_x509_certificate(base64.b64decode(secret["tls.crt"]))
    served.verify_directly_issued_by(ca)
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    service = "modelcar-prefetcher-webhook.modelcar-prefetcher-webhook.svc"
    assert service in names.get_values_for_type(x509.DNSName)


def test_cert_manager_issues_the_certificate_and_injects_the_ca_instead(tmp_path: Path) -> None:
    docs = template({"webhook": {"certificates": {"source": "cert-manager"}}}, directory=tmp_path)
    assert not [d for d in docs if d["kind"] == "Secret"]
    certificate = one(docs, "Certificate", "modelcar-prefetcher-webhook")
    assert certificate["spec"]["secretName"] == "modelcar-prefetcher-webhook-tls"
    webhook = one(docs, "MutatingWebhookConfiguration")
    assert webhook["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "modelcar-prefetcher-webhook/modelcar-prefetcher-webhook"
    }
    assert all("caBundle" not in w["clientConfig"] for w in webhook["webhooks"])
    kustomize = by_name(render(REPO / "deploy" / "webhook" / "cert-manager"))
    helm = by_name(docs)
    issuers = [k for k in kustomize if k[0] in ("Issuer", "Certificate")]
    assert len(issuers) == 4
    for kind, name in issuers:  # the same chain: self-signed root, CA, serving certificate
        assert differences(kustomize[kind, name]["spec"], helm[kind, name]["spec"]) == [], (kind, name)


# A bad value, the key helm's schema error must name, and whether the agent's own loader rejects the
# same value (the schema is derived from the loader's checks: they must agree).
BAD_CONFIG = [
    ({"budget": {"maxUsagePercent": 120}}, "/config/budget/maxUsagePercent", "budget.maxUsagePercent"),
    ({"budget": {"unpackFactor": 0.5}}, "/config/budget/unpackFactor", "budget.unpackFactor"),
    ({"pull": {"tagPolicy": "sometimes"}}, "/config/pull/tagPolicy", "pull.tagPolicy"),
    ({"pull": {"concurrency": "two"}}, "/config/pull/concurrency", "pull.concurrency"),
    ({"budget": {"maxUsagePercnt": 70}}, "maxUsagePercnt", "budget.maxUsagePercnt"),
    ({"listenAddress": "8080"}, "/config/listenAddress", "listenAddress"),
    ({"logLevel": "verbose"}, "/config/logLevel", "logLevel"),
    ({"eviction": {"enabled": "yes"}}, "/config/eviction/enabled", "eviction.enabled"),
    ({"registries": {"insecure": "host:5000"}}, "/config/registries/insecure", "registries.insecure"),
    (
        {"kubernetes": {"nodeSelector": {"gpu": True}}},
        "/config/kubernetes/nodeSelector/gpu",
        "kubernetes.nodeSelector",
    ),
]


@pytest.mark.parametrize(("config", "key", "agent_key"), BAD_CONFIG, ids=[k for _c, k, _a in BAD_CONFIG])
def test_a_bad_config_value_is_refused_by_helm_naming_its_key_as_the_agent_would(
    tmp_path: Path, config: dict[str, Any], key: str, agent_key: str
) -> None:
    result = template_result({"config": config}, directory=tmp_path)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert key in result.stderr, result.stderr
    shipped = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    with pytest.raises(ConfigError, match=re.escape(agent_key)):
        load_config(yaml.safe_dump(merge(shipped, config)))


BAD_VALUES = [
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"digest": "abc"}}, "/image/digest"),
    ({"webhook": {"certificates": {"source": "vault"}}}, "/webhook/certificates/source"),
    ({"webhook": {"failurePolicy": "Retry"}}, "/webhook/failurePolicy"),
    ({"tolerations": "nvidia.com/gpu"}, "/tolerations"),
    ({"models": [{"priority": 3}]}, "/models/0"),
    ({"serviceMonitor": {"enabld": True}}, "enabld"),
]


@pytest.mark.parametrize(("values", "key"), BAD_VALUES, ids=[k for _v, k in BAD_VALUES])
def test_a_bad_chart_value_is_refused_naming_its_key(
    tmp_path: Path, values: dict[str, Any], key: str
) -> None:
    result = template_result(values, directory=tmp_path)
    assert result.returncode != 0
    assert key in result.stderr, result.stderr


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, mapping by mapping, as helm merges values."""
    merged = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict) and value and base[key]
        merged[key] = merge(base[key], value) if both else value
    return merged
