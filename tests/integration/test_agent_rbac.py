"""The shipped agent RBAC on a real kube-apiserver, checked by impersonating the ServiceAccount."""

from __future__ import annotations

import pytest

from tests.support.agent_rbac import PULL_SECRETS_ROLE, apply_agent_rbac, can
from tests.support.apiserver import ApiServer
from tests.support.kube_objects import unique

pytestmark = pytest.mark.integration
REPORTER_LEASE = "modelcar-prefetcher-warmth-reporter"


@pytest.fixture(scope="module")
def rbac_applied(apiserver: ApiServer, isvc_crd: str) -> None:
    apply_agent_rbac(apiserver)


@pytest.mark.parametrize(
    ("verb", "resource", "extra"),
    [
        ("list", "inferenceservices.serving.kserve.io", ("--all-namespaces",)),
        ("watch", "inferenceservices.serving.kserve.io", ("--all-namespaces",)),
        ("watch", "nodes", ()),
        ("patch", "nodes", ()),
        ("patch", "nodes", ("--subresource=status",)),
        ("create", "events", ("-n", "team-a")),
        ("patch", "events", ("-n", "team-a")),
        # The warmth reporter: every Node's summary, and its one Lease in the agent's namespace.
        ("list", "nodes", ()),
        ("get", f"leases/{REPORTER_LEASE}", ("-n", "modelcar-prefetcher")),
        ("update", f"leases/{REPORTER_LEASE}", ("-n", "modelcar-prefetcher")),
        ("create", "leases", ("-n", "modelcar-prefetcher")),
    ],
)
def test_the_agent_can_do_what_it_needs(
    apiserver: ApiServer, rbac_applied: None, verb: str, resource: str, extra: tuple[str, ...]
) -> None:
    assert can(apiserver, verb, resource, *extra)


@pytest.mark.parametrize(
    ("verb", "resource", "extra"),
    [
        ("get", "secrets", ("--all-namespaces",)),
        ("list", "secrets", ("-n", "team-a")),
        ("get", "serviceaccounts", ("-n", "team-a")),
        ("delete", "nodes", ()),
        ("update", "nodes", ()),
        ("create", "nodes", ()),
        ("update", "nodes", ("--subresource=status",)),
        ("patch", "inferenceservices.serving.kserve.io", ("-n", "team-a")),
        ("create", "pods", ("-n", "team-a")),
        ("list", "pods", ("--all-namespaces",)),
        ("delete", "events", ("-n", "team-a")),
        ("*", "*", ()),
        # Leases elsewhere: kubelet's heartbeats, controllers' leader elections.
        ("update", "leases", ("-n", "kube-node-lease")),
        ("get", "leases", ("-n", "kube-system")),
        ("create", "leases", ("-n", "team-a")),
        ("patch", f"leases/{REPORTER_LEASE}", ("-n", "modelcar-prefetcher")),
    ],
)
def test_the_agent_cannot_read_secrets_or_change_what_it_does_not_own(
    apiserver: ApiServer, rbac_applied: None, verb: str, resource: str, extra: tuple[str, ...]
) -> None:
    assert not can(apiserver, verb, resource, *extra)


def test_the_optional_role_lets_the_agent_get_pull_secrets_in_its_namespace_only(
    apiserver: ApiServer, rbac_applied: None
) -> None:
    bound, other = unique("ns"), unique("ns")
    for namespace in (bound, other):
        apiserver.create_namespace(namespace)
    apiserver.kubectl("apply", "-n", bound, "-f", str(PULL_SECRETS_ROLE))
    assert can(apiserver, "get", "secrets", "-n", bound)
    assert can(apiserver, "get", "serviceaccounts", "-n", bound)
    for verb, resource, namespace in [
        ("list", "secrets", bound),
        ("watch", "secrets", bound),
        ("list", "serviceaccounts", bound),
        ("get", "secrets", other),
        ("get", "serviceaccounts", other),
        ("create", "secrets", bound),
    ]:
        assert not can(apiserver, verb, resource, "-n", namespace), (verb, resource, namespace)
