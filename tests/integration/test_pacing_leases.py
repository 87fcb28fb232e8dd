"""Fleet pacing's adapters on a real kube-apiserver: slot Leases, warm digests, and their RBAC.

The agent's side runs as the agent's ServiceAccount (a client certificate with its name and
groups) against the shipped RBAC, so the namespaced Role is proven by use as well as by
``kubectl auth can-i`` impersonation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from prefetcher.adapters.kube_api import api_client
from prefetcher.adapters.leases import LABEL, LeaseStore
from prefetcher.adapters.node_warm import ANNOTATION, NodeWarmth
from prefetcher.adapters.warmth_report import LeaderLease
from prefetcher.errors import KubeError
from prefetcher.testing.fakes import FakeClock
from tests.support.agent_rbac import agent_kubeconfig, apply_agent_rbac, can, node_agent_kubeconfig
from tests.support.apiserver import ApiServer
from tests.support.kube_objects import create_node, unique

pytestmark = pytest.mark.integration
AGENT_NAMESPACE = "modelcar-prefetcher"


class _Clock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.fixture(scope="module")
def agent_api(apiserver: ApiServer) -> Iterator[Any]:
    """A client authenticated as the agent's ServiceAccount, with the shipped RBAC applied."""
    apply_agent_rbac(apiserver)
    api = api_client(kubeconfig=str(agent_kubeconfig(apiserver)))
    yield api
    api.close()


@pytest.fixture
def store(agent_api: Any) -> LeaseStore:
    return LeaseStore(agent_api, namespace=AGENT_NAMESPACE, clock=_Clock(), timeout_seconds=10)


def test_only_one_node_creates_a_slot_and_the_other_learns_it_lost(store: LeaseStore) -> None:
    name = unique("modelcar-pull-slot")
    first = store.take(name, holder="node-a", duration_seconds=30, version=None)
    assert first is not None
    assert store.take(name, holder="node-b", duration_seconds=30, version=None) is None
    state = store.list()[name]
    assert (state.holder, state.version, state.duration_seconds) == ("node-a", first, 30.0)


def test_an_update_with_a_stale_version_loses_and_a_fresh_one_wins(store: LeaseStore) -> None:
    name = unique("modelcar-pull-slot")
    read = store.take(name, holder="node-a", duration_seconds=30, version=None)
    assert read is not None
    renewed = store.take(name, holder="node-a", duration_seconds=30, version=read)
    assert renewed is not None and renewed != read
    # node-b read the slot before the renewal and believes it expired: its take-over must fail.
    assert store.take(name, holder="node-b", duration_seconds=30, version=read) is None
    assert store.take(name, holder="node-b", duration_seconds=30, version=renewed) is not None
    assert store.list()[name].holder == "node-b"


def test_a_release_never_removes_a_slot_another_node_took_over(store: LeaseStore) -> None:
    name = unique("modelcar-pull-slot")
    mine = store.take(name, holder="node-a", duration_seconds=30, version=None)
    assert mine is not None
    theirs = store.take(name, holder="node-b", duration_seconds=30, version=mine)
    assert theirs is not None
    store.release(name, version=mine)
    assert store.list()[name].holder == "node-b"
    store.release(name, version=theirs)
    assert name not in store.list()
    store.release(name, version=theirs)  # already gone: nothing to do


def test_only_pacing_leases_are_listed(apiserver: ApiServer, store: LeaseStore) -> None:
    other = unique("someone-elses-lease")
    lease = f'{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{other}"}}}}'
    apiserver.kubectl("apply", "-n", AGENT_NAMESPACE, "-f", "-", input=lease)
    name = unique("modelcar-pull-slot")
    store.take(name, holder="node-a", duration_seconds=30, version=None)
    listed = store.list()
    assert name in listed and other not in listed
    labels = apiserver.kubectl(
        "get", "lease", "-n", AGENT_NAMESPACE, name, "-o", "jsonpath={.metadata.labels}"
    )
    assert LABEL in labels


def test_leases_outside_the_agents_namespace_are_forbidden(apiserver: ApiServer, agent_api: Any) -> None:
    elsewhere = unique("ns")
    apiserver.create_namespace(elsewhere)
    store = LeaseStore(agent_api, namespace=elsewhere, clock=_Clock())
    with pytest.raises(KubeError, match="403"):
        store.take("modelcar-pull-x-0", holder="node-a", duration_seconds=30, version=None)
    with pytest.raises(KubeError, match="403"):
        store.list()


@pytest.mark.parametrize(
    ("verb", "namespace", "allowed"),
    [
        ("list", AGENT_NAMESPACE, True),
        ("create", AGENT_NAMESPACE, True),
        ("update", AGENT_NAMESPACE, True),
        ("delete", AGENT_NAMESPACE, True),
        ("watch", AGENT_NAMESPACE, False),
        ("patch", AGENT_NAMESPACE, False),
        ("deletecollection", AGENT_NAMESPACE, False),
        ("update", "kube-node-lease", False),
        ("create", "kube-system", False),
        ("list", "default", False),
    ],
)
def test_the_lease_role_is_namespaced_and_least_privilege(
    apiserver: ApiServer, agent_api: Any, verb: str, namespace: str, allowed: bool
) -> None:
    assert can(apiserver, verb, "leases.coordination.k8s.io", "-n", namespace) is allowed
    assert not can(apiserver, "list", "leases.coordination.k8s.io", "--all-namespaces")


def test_warm_digests_are_published_once_and_read_from_the_other_nodes(apiserver: ApiServer) -> None:
    here, there = create_node(apiserver), create_node(apiserver)
    # Each node's agent as deployed: under the node policy an agent annotates only its own Node.
    here_api = api_client(kubeconfig=str(node_agent_kubeconfig(apiserver, here)))
    there_api = api_client(kubeconfig=str(node_agent_kubeconfig(apiserver, there)))
    mine, theirs = NodeWarmth(here_api, node_name=here), NodeWarmth(there_api, node_name=there)
    digest = "sha256:" + "ab" * 32
    theirs.publish([digest, digest])
    mine.publish(["sha256:" + "cd" * 32])
    assert digest in mine.elsewhere()
    assert "sha256:" + "cd" * 32 not in mine.elsewhere()  # its own node does not count
    annotation = ANNOTATION.replace(".", "\\.")
    written = apiserver.kubectl(
        "get", "node", there, "-o", f"jsonpath={{.metadata.annotations.{annotation}}}"
    )
    assert written == digest
    theirs.publish([])
    assert digest not in mine.elsewhere()
    here_api.close()
    there_api.close()


def test_a_missing_namespace_is_an_error_not_a_lost_race(apiserver: ApiServer) -> None:
    admin = api_client(kubeconfig=str(apiserver.kubeconfig))
    try:
        store = LeaseStore(admin, namespace=unique("missing"), clock=_Clock())
        with pytest.raises(KubeError, match="404"):
            store.take("modelcar-pull-x-0", holder="node-a", duration_seconds=30, version=None)
    finally:
        admin.close()


def test_leases_written_at_a_whole_second_are_accepted(apiserver: ApiServer, agent_api: Any) -> None:
    clock = FakeClock(wall=1_800_000_000.0)  # the client drops a zero fraction; MicroTime needs one
    store = LeaseStore(agent_api, namespace=AGENT_NAMESPACE, clock=clock)
    name = unique("modelcar-pull-slot")
    version = store.take(name, holder="node-a", duration_seconds=30, version=None)
    assert version is not None
    assert store.take(name, holder="node-a", duration_seconds=30, version=version) is not None
    namespace = unique("ns")
    apiserver.create_namespace(namespace)
    admin = api_client(kubeconfig=str(apiserver.kubeconfig))
    try:
        lease = LeaderLease(admin, namespace=namespace, holder="node-a", duration_seconds=30, clock=clock)
        assert lease.hold() and lease.hold()
    finally:
        admin.close()
