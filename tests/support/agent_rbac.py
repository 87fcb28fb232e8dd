"""Test support: the agent's shipped RBAC on the test API server, and checks made as the agent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.apiserver import ApiServer
from tests.support.kube_objects import unique

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "agent"
NAMESPACE = "modelcar-prefetcher"
AGENT = "system:serviceaccount:modelcar-prefetcher:modelcar-prefetcher"
PULL_SECRETS_ROLE = DEPLOY / "optional" / "pull-secrets-role.yaml"


def can(apiserver: ApiServer, verb: str, resource: str, *extra: str) -> bool:
    """``kubectl auth can-i`` as the agent: exit 0 is yes, 1 is no, anything else is an error."""
    command = [
        str(apiserver.assets_dir / "kubectl"),
        f"--kubeconfig={apiserver.kubeconfig}",
        "auth",
        "can-i",
        verb,
        resource,
        f"--as={AGENT}",
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def apply_agent_rbac(apiserver: ApiServer) -> None:
    """The agent's namespace, ServiceAccount and cluster-wide RBAC, as shipped (idempotent)."""
    for name in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        apiserver.kubectl("apply", "-f", str(DEPLOY / name))


def agent_kubeconfig(apiserver: ApiServer) -> Path:
    """A kubeconfig that authenticates as the agent's ServiceAccount (a client certificate with its
    user name and groups, which RBAC matches like the ServiceAccount's token)."""
    groups = ("system:serviceaccounts", "system:serviceaccounts:modelcar-prefetcher")
    return apiserver.write_kubeconfig(AGENT, groups)


def token_kubeconfig(apiserver: ApiServer, token: str, name: str) -> Path:
    path = apiserver.workdir / f"{name}.kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "t",
                        "cluster": {"server": apiserver.url, "certificate-authority": str(apiserver.ca_file)},
                    }
                ],
                "users": [{"name": "t", "user": {"token": token}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
                "current-context": "t",
            }
        )
    )
    return path


def agent_pod_on(apiserver: ApiServer, node: str) -> str:
    """A Pod of the agent's ServiceAccount bound to ``node`` (as the DaemonSet's pod would be)."""
    name = unique("agent")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "serviceAccountName": "modelcar-prefetcher",
            "nodeName": node,
            "containers": [{"name": "agent", "image": "modelcar-prefetcher:test"}],
        },
    }
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(pod))
    return name


def agent_token(apiserver: ApiServer, *bound: str) -> str:
    return apiserver.kubectl("create", "token", "modelcar-prefetcher", "-n", NAMESPACE, *bound).strip()


def node_agent_kubeconfig(apiserver: ApiServer, node: str) -> Path:
    """The shipped RBAC and node policy, and a kubeconfig of the agent on ``node`` as deployed: a
    ServiceAccount token bound to a Pod on that node, so the API server itself puts the node's name
    in the token's ``authentication.kubernetes.io/node-name`` extra the node policy checks."""
    apply_agent_rbac(apiserver)
    apiserver.kubectl("apply", "-n", NAMESPACE, "-f", str(DEPLOY / "serviceaccount.yaml"))
    apiserver.kubectl("apply", "-f", str(DEPLOY / "node-policy.yaml"))
    pod = agent_pod_on(apiserver, node)
    token = agent_token(apiserver, "--bound-object-kind=Pod", f"--bound-object-name={pod}")
    return token_kubeconfig(apiserver, token, unique("agent-token"))
