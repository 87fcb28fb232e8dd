"""deploy/agent/node-policy.yaml on a real kube-apiserver: an agent modifies only its own Node.

The agent authenticates with real ServiceAccount tokens issued by the API server (TokenRequest),
bound to a Pod on a node as kubelet's projected token is, so the node comes from the API server
itself (user extra ``authentication.kubernetes.io/node-name``), not from anything the test claims.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from prefetcher.adapters.kube_api import api_client
from tests.support.agent_rbac import (
    DEPLOY,
    agent_pod_on,
    agent_token,
    apply_agent_rbac,
    can,
    token_kubeconfig,
)
from tests.support.apiserver import ApiServer, ControlPlaneError
from tests.support.kube_objects import create_node, unique

pytestmark = pytest.mark.integration
NAMESPACE = "modelcar-prefetcher"
SUMMARY = "modelcar-prefetcher.io/summary"
STARTUP = "modelcar-prefetcher.io/warming"



def claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))




def patch(apiserver: ApiServer, kubeconfig: Path, node: str, body: object, kind: str = "merge") -> str:
    """'' when the patch was admitted, else the API server's error."""
    try:
        apiserver.kubectl(
            "patch", "node", node, f"--type={kind}", "-p", json.dumps(body), kubeconfig=kubeconfig
        )
    except ControlPlaneError as error:
        return str(error)
    return ""


def status_patch(kubeconfig: Path, node: str, body: object) -> str:
    """'' when the patch of the node's status was admitted, else the error: the agent's own call
    (a strategic merge patch, no read first; kubectl would read ``nodes/status``, which the agent
    is not granted)."""
    api = api_client(kubeconfig=str(kubeconfig))
    try:
        client.CoreV1Api(api).patch_node_status(node, body, _request_timeout=10)
    except ApiException as error:
        return str(json.loads(error.body)["message"])
    finally:
        api.close()
    return ""


def can_patch_any_node(apiserver: ApiServer) -> bool:
    return can(apiserver, "patch", "nodes")


@pytest.fixture(scope="module")
def policy(apiserver: ApiServer) -> None:
    apply_agent_rbac(apiserver)
    apiserver.kubectl("apply", "-n", NAMESPACE, "-f", str(DEPLOY / "serviceaccount.yaml"))
    apiserver.kubectl("apply", "-f", str(DEPLOY / "node-policy.yaml"))


def test_a_pod_bound_token_modifies_only_its_own_node_and_only_what_the_agent_owns(
    apiserver: ApiServer, policy: None
) -> None:
    own, other = create_node(apiserver), create_node(apiserver)
    for node in (own, other):
        apiserver.kubectl("taint", "node", node, f"{STARTUP}:NoSchedule", "example.com/gpu=x:NoSchedule")
    token = agent_token(
        apiserver, "--bound-object-kind=Pod", f"--bound-object-name={agent_pod_on(apiserver, own)}"
    )
    # The API server itself names the node in the token (ServiceAccountTokenPodNodeInfo).
    assert claims(token)["kubernetes.io"]["node"]["name"] == own  # type: ignore[index]
    agent = token_kubeconfig(apiserver, token, unique("agent-token"))

    # What the agent does: the summary annotation, and removing its start-up taint from its node.
    assert patch(apiserver, agent, own, {"metadata": {"annotations": {SUMMARY: "{}"}}}) == ""
    assert (
        patch(apiserver, agent, own, {"metadata": {"labels": {"modelcar-prefetcher.io/warm": "true"}}}) == ""
    )
    taints = json.loads(apiserver.kubectl("get", "node", own, "-o", "json"))["spec"]["taints"]
    keep = [t for t in taints if t["key"] != STARTUP]
    remove = [
        {"op": "test", "path": "/spec/taints", "value": taints},
        {"op": "replace", "path": "/spec/taints", "value": keep},
    ]
    assert patch(apiserver, agent, own, remove, kind="json") == ""
    # The models-warm condition, through the status subresource.
    warm = {"type": "modelcar-prefetcher.io/ModelsWarm", "status": "True", "reason": "ModelsWarm"}
    assert status_patch(agent, own, {"status": {"conditions": [warm]}}) == ""

    # Another node, even what would be allowed on its own.
    denied = patch(apiserver, agent, other, {"metadata": {"annotations": {SUMMARY: "{}"}}})
    assert f"the modelcar-prefetcher agent on node {own} may not modify node {other}" in denied
    # Anything else on its own node.
    forbidden = [
        ({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}, "only labels under"),
        ({"metadata": {"annotations": {"example.com/x": "y"}}}, "only annotations under"),
        ({"spec": {"unschedulable": True}}, "may not change a Node's spec"),
        ({"spec": {"taints": []}}, "may only remove taints under"),
        (
            {"spec": {"taints": [*keep, {"key": "example.com/evil", "effect": "NoExecute"}]}},
            "may only remove taints",
        ),
    ]
    for body, message in forbidden:
        assert message in patch(apiserver, agent, own, body), body
    not_ready = {"type": "Ready", "status": "False", "reason": "Forged"}
    for body in (
        {"status": {"conditions": [not_ready]}},
        {"status": {"capacity": {"nvidia.com/gpu": "8"}}},
    ):
        assert "only status conditions under" in status_patch(agent, own, body), body
    assert "may not modify node" in status_patch(agent, other, {"status": {"conditions": [warm]}})
    after = json.loads(apiserver.kubectl("get", "node", own, "-o", "json"))
    assert [t["key"] for t in after["spec"]["taints"]] == ["example.com/gpu"]
    assert "node-role.kubernetes.io/control-plane" not in after["metadata"]["labels"]
    assert not after["spec"].get("unschedulable")
    other_taints = json.loads(apiserver.kubectl("get", "node", other, "-o", "json"))["spec"]["taints"]
    assert STARTUP in [t["key"] for t in other_taints]


def test_a_token_without_a_node_modifies_no_node(apiserver: ApiServer, policy: None) -> None:
    node = create_node(apiserver)
    # RBAC alone allows this patch (the ClusterRole grants patch on every Node): the policy stops it.
    assert can_patch_any_node(apiserver)
    unbound = token_kubeconfig(apiserver, agent_token(apiserver), unique("unbound"))
    denied = patch(apiserver, unbound, node, {"metadata": {"annotations": {SUMMARY: "{}"}}})
    assert "token carries no node" in denied
