"""Test support: the agent's shipped RBAC on the test API server, and checks made as the agent."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.apiserver import ApiServer

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "agent"
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
