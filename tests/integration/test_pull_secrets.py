"""Pull credentials from an InferenceService's ServiceAccount, against a real kube-apiserver.

The adapter reads ServiceAccounts and Secrets created through the API; the agent, authenticated as
its own ServiceAccount with the shipped RBAC, resolves and pulls a model from a registry behind
htpasswd auth into the real containerd with a namespace's pull secret, and where the optional Role
is not bound it says so and still pulls a public model.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefetcher.adapters.kube_api import api_client
from prefetcher.adapters.pull_secrets import ServiceAccountPullSecrets
from prefetcher.core.isvc import IsvcModels, extract_models
from prefetcher.errors import CredentialsError
from prefetcher.ports import Credentials
from prefetcher.testing.fakes import FakeClock
from tests.support.agent_process import agent_config, run_agent_once
from tests.support.agent_rbac import PULL_SECRETS_ROLE, agent_kubeconfig, apply_agent_rbac
from tests.support.apiserver import ApiServer
from tests.support.containerd import RunningContainerd
from tests.support.kube_objects import apply_isvc, create_node, unique
from tests.support.oci import push_modelcar
from tests.support.registry import RunningRegistry, start_registry

pytestmark = pytest.mark.integration
USER, PASSWORD = "puller", "pull-s3cret-value"
HOST_A, HOST_B = "a.registry.test:5000", "b.registry.test"
DIGEST = "sha256:" + "5e" * 32


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": _b64(f"{user}:{password}")}


def secret(name: str, kind: str, key: str, document: object) -> dict[str, Any]:
    data = {key: _b64(json.dumps(document))}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": kind, "data": data}


def dockerconfigjson(name: str, auths: dict[str, Any]) -> dict[str, Any]:
    return secret(name, "kubernetes.io/dockerconfigjson", ".dockerconfigjson", {"auths": auths})


def service_account(name: str, *secrets: str) -> dict[str, Any]:
    pulls = [{"name": s} for s in secrets]
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name},
        "imagePullSecrets": pulls,
    }


def create(apiserver: ApiServer, namespace: str, *objects: dict[str, Any]) -> None:
    items = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    apiserver.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(items))


def record(namespace: str, predictor: dict[str, Any]) -> IsvcModels:
    isvc = {"metadata": {"namespace": namespace, "name": "llm"}, "spec": {"predictor": predictor}}
    return extract_models(isvc, default_priority=0, scale_to_zero_boost=0)


@pytest.fixture
def admin_api(apiserver: ApiServer) -> Iterator[Any]:
    api = api_client(kubeconfig=str(apiserver.kubeconfig))
    yield api
    api.close()


def test_secrets_are_found_as_kubelet_finds_them_and_problems_are_named(
    apiserver: ApiServer, admin_api: Any
) -> None:
    namespace = unique("ns")
    apiserver.create_namespace(namespace)
    create(
        apiserver,
        namespace,
        secret("legacy", "kubernetes.io/dockercfg", ".dockercfg", {f"https://{HOST_A}": _auth("old", "1")}),
        dockerconfigjson("modern", {HOST_A: _auth("new", "2"), HOST_B: _auth("b", "3")}),
        dockerconfigjson("broken", {HOST_A: {"auth": "!!"}}),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "opaque"}, "stringData": {"x": "y"}},
        service_account("puller", "legacy", "modern"),
        service_account("dangling", "absent"),
    )
    records = {
        "isvc account": record(namespace, {"model": {"storageUri": f"oci://{HOST_A}/m@{DIGEST}"}}),
        "isvc b": record(namespace, {"model": {"storageUri": f"oci://{HOST_B}/m@{DIGEST}"}}),
    }

    def lookup(host: str, predictor: dict[str, Any]) -> Credentials | None:
        records["isvc x"] = record(
            namespace, {"model": {"storageUri": f"oci://{host}/m@{DIGEST}"}, **predictor}
        )
        return secrets.credentials_for(host, ("isvc x",))

    clock = FakeClock()
    secrets = ServiceAccountPullSecrets(admin_api, records=records.get, clock=clock, ttl_seconds=60)
    assert lookup(HOST_A, {"serviceAccountName": "puller"}) == Credentials("old", "1")  # first secret wins
    assert lookup(HOST_B, {"serviceAccountName": "puller"}) == Credentials("b", "3")
    assert lookup(HOST_A, {"imagePullSecrets": [{"name": "modern"}]}) == Credentials("new", "2")
    assert lookup("elsewhere.test", {"serviceAccountName": "puller"}) is None
    assert lookup(HOST_A, {}) is None  # the namespace's default ServiceAccount names no secrets
    for predictor, message in [
        ({"serviceAccountName": "ghost"}, f"ServiceAccount {namespace}/ghost not found"),
        ({"serviceAccountName": "dangling"}, f"image pull secret {namespace}/absent not found"),
        (
            {"imagePullSecrets": [{"name": "broken"}]},
            f"{namespace}/broken: docker config: auths.{HOST_A}.auth",
        ),
        ({"imagePullSecrets": [{"name": "opaque"}]}, f"{namespace}/opaque: type 'Opaque' is not one of"),
    ]:
        with pytest.raises(CredentialsError, match=message) as caught:
            lookup(HOST_A, predictor)
        assert "!!" not in str(caught.value)

    # Answers are kept for ttl_seconds, then read again.
    apiserver.kubectl("delete", "secret", "legacy", "-n", namespace)
    assert lookup(HOST_A, {"serviceAccountName": "puller"}) == Credentials("old", "1")
    clock.advance(61)
    with pytest.raises(CredentialsError, match=f"image pull secret {namespace}/legacy not found"):
        lookup(HOST_A, {"serviceAccountName": "puller"})


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with start_registry(tmp_path_factory.mktemp("pull-secrets"), htpasswd=(USER, PASSWORD)) as running:
        yield running


def namespace_with_pull_secret(apiserver: ApiServer, registry: RunningRegistry, *, bound: bool) -> str:
    namespace = unique("ns")
    apiserver.create_namespace(namespace)
    regcred = dockerconfigjson("regcred", {registry.host: _auth(USER, PASSWORD)})
    create(apiserver, namespace, regcred, service_account("puller", "regcred"))
    if bound:
        apiserver.kubectl("apply", "-n", namespace, "-f", str(PULL_SECRETS_ROLE))
    return namespace


@pytest.mark.usefixtures("isvc_crd")
def test_the_agent_pulls_with_the_service_account_secret_and_says_when_the_role_is_missing(
    apiserver: ApiServer,
    containerd: RunningContainerd,
    registry: RunningRegistry,
    private_registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    apply_agent_rbac(apiserver)
    bound = namespace_with_pull_secret(apiserver, private_registry, bound=True)
    unbound = namespace_with_pull_secret(apiserver, private_registry, bound=False)
    mine = push_modelcar(private_registry, "models/secret-mine", files={"m": b"mine"})
    theirs = push_modelcar(private_registry, "models/secret-theirs", files={"t": b"theirs"})
    public = push_modelcar(registry, "models/secret-public", files={"p": b"public"})
    apply_isvc(
        apiserver, bound, "private", {"model": {"storageUri": mine.uri}, "serviceAccountName": "puller"}
    )
    apply_isvc(
        apiserver, unbound, "private", {"model": {"storageUri": theirs.uri}, "serviceAccountName": "puller"}
    )
    apply_isvc(apiserver, unbound, "public", {"model": {"storageUri": public.uri}})
    config = tmp_path / "agent.yaml"
    hosts = [registry.host, private_registry.host]
    settings = agent_config(
        containerd,
        hosts,
        tmp_path,
        credentials={"serviceAccountPullSecrets": True},
        kubernetes={"namespaces": [bound, unbound]},
    )
    config.write_text(json.dumps(settings))

    result = run_agent_once(config, node=create_node(apiserver), kubeconfig=agent_kubeconfig(apiserver))

    assert result.returncode == 1, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    present = containerd.image_refs()
    assert mine.ref in present and public.ref in present, result.stdout
    assert theirs.ref not in present
    hint = f"RoleBinding that lets the agent read pull secrets in namespace {unbound} is missing"
    failed = [line for line in result.stdout.splitlines() if line.startswith(f"  failed   {theirs.ref}")]
    assert len(failed) == 1 and "401" in failed[0] and hint in failed[0], result.stdout
    assert f"kubectl apply -n {unbound} -f deploy/agent/optional/pull-secrets-role.yaml" in failed[0]
    assert reasons(apiserver, bound, "private") >= {"Prefetched"}
    assert reasons(apiserver, unbound, "private") >= {"PrefetchFailed"}
    assert reasons(apiserver, unbound, "public") >= {"Prefetched", "PullSecretsUnavailable"}


def reasons(apiserver: ApiServer, namespace: str, name: str) -> set[str]:
    events = json.loads(apiserver.kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
    return {e["reason"] for e in events if e["involvedObject"]["name"] == name}
