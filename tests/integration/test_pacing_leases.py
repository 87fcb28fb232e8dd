"""Fleet pacing's adapters on a real kube-apiserver: slot Leases, warm digests, and their RBAC.

The agent's side runs as the agent's ServiceAccount (a client certificate with its name and
groups) against the shipped RBAC, so the namespaced Role is proven by use as well as by
``kubectl auth can-i`` impersonation.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from prefetcher.adapters.kube_api import api_client
from prefetcher.adapters.leases import LABEL, LeaseStore
from prefetcher.adapters.node_warm import ANNOTATION, NodeWarmth
from prefetcher.adapters.warmth_report import LeaderLease
from prefetcher.agent.pacer import Pacer, model_key
from prefetcher.core.model import Plan, Pull
from prefetcher.core.pacing import LEASE_PREFIX, PacingPolicy, digest_lease
from prefetcher.errors import KubeError
from prefetcher.metrics import Metrics
from prefetcher.testing.fakes import FakeClock, FakeEvents
from tests.support.agent_rbac import agent_kubeconfig, apply_agent_rbac, can, node_agent_kubeconfig
from tests.support.apiserver import ApiServer
from tests.support.kube_objects import create_node, unique
from tests.support.planner_inputs import model

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


def _annotation(apiserver: ApiServer, node: str) -> str:
    key = ANNOTATION.replace(".", "\\.")
    return apiserver.kubectl("get", "node", node, "-o", f"jsonpath={{.metadata.annotations.{key}}}")


def test_junk_in_warm_annotations_counts_for_nothing_and_ours_is_written_again(apiserver: ApiServer) -> None:
    here, there, junk_only = (create_node(apiserver) for _ in range(3))
    here_api = api_client(kubeconfig=str(node_agent_kubeconfig(apiserver, here)))
    mine = NodeWarmth(here_api, node_name=here)
    digest, liar = "sha256:" + "5e" * 32, "sha256:" + "1a" * 32
    junk = f"{liar}x,SHA256:{'1A' * 32},*,reg.io/m@{liar},not a ref,{'z' * 100_000}"
    for node, text in ((there, f"{junk},{digest}"), (junk_only, junk)):  # as anyone with patch rights
        patch = json.dumps({"metadata": {"annotations": {ANNOTATION: text}}})
        apiserver.kubectl("patch", "node", node, "--type=merge", "--patch-file=/dev/stdin", input=patch)
    try:
        seen = mine.elsewhere()
        assert digest in seen and not any(liar[7:] in key.lower() for key in seen), sorted(seen)[:5]
        assert all(key.startswith("sha") or "/" in key for key in seen)  # nothing of the junk
        mine.publish([digest])
        apiserver.kubectl("annotate", "node", here, "--overwrite", f"{ANNOTATION}=junk")
        mine.elsewhere()  # it notices its own annotation changed under it
        mine.publish([digest])
        assert _annotation(apiserver, here) == digest
    finally:
        here_api.close()


POLICY = PacingPolicy(enabled=True, seed_pulls=1, max_concurrent_pulls=2, lease_duration_seconds=30)
FAR_FUTURE = "2999-01-01T00:00:00.000000Z"
# (spec written by someone else, extra metadata, seconds until it no longer holds the slot)
FOREIGN = {
    "no label, held for 68 years, renewed in the future": (
        {"holderIdentity": "intruder", "leaseDurationSeconds": 2_147_483_647, "renewTime": FAR_FUTURE},
        {},
        3 * POLICY.lease_duration_seconds,
    ),
    "no spec at all": ({}, {"labels": {LABEL: "slot"}}, 0),
    "a holder and nothing else": ({"holderIdentity": "intruder"}, {}, POLICY.lease_duration_seconds),
    "junk labels and annotations": (
        {"holderIdentity": "intruder", "leaseDurationSeconds": 5, "renewTime": FAR_FUTURE},
        {"labels": {LABEL: "junk", "x": "y"}, "annotations": {"a": "\u0000" * 3 + "{" * 1000}},
        5,
    ),
}


@pytest.mark.parametrize(("spec", "metadata", "held"), FOREIGN.values(), ids=FOREIGN.keys())
def test_a_slot_lease_written_by_someone_else_holds_the_slot_only_by_our_rules(
    apiserver: ApiServer, agent_api: Any, spec: dict[str, Any], metadata: dict[str, Any], held: float
) -> None:
    wanted = model(unique("foreign"))
    slot = digest_lease(model_key(wanted), 0)
    lookalikes = [f"{slot}-x", slot.replace("-0", "-00"), f"{LEASE_PREFIX}-{slot}"]
    for name, body in [(slot, spec), *((n, {"holderIdentity": "intruder"}) for n in lookalikes)]:
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": body}
        lease["metadata"] = {"name": name, "labels": {LABEL: "slot"}} | metadata | {"name": name}
        apiserver.kubectl("apply", "-n", AGENT_NAMESPACE, "-f", "-", input=json.dumps(lease))
    clock, events = FakeClock(), FakeEvents()
    pacer = Pacer(
        leases=LeaseStore(agent_api, namespace=AGENT_NAMESPACE, clock=clock),
        warmth=NodeWarmth(agent_api, node_name=unique("no-such-node")),
        node="node-a",
        clock=clock,
        events=events,
        metrics=Metrics(CollectorRegistry()),
        policy=lambda: POLICY,
    )
    plan = Plan(pulls=(Pull(wanted, 2 * wanted.size_bytes),))

    def turn() -> bool:
        decided = pacer.decide(plan)
        return bool(decided.pulls) and pacer.take(decided.pulls[0])

    if held:
        assert not turn()
        clock.advance(held - 1)
        assert not turn()
        clock.advance(1)
    assert turn()
    assert not events.reasons()  # a turn by the rules, not the maxWaitSeconds deadline
    holder = "jsonpath={.spec.holderIdentity}"
    assert apiserver.kubectl("get", "lease", "-n", AGENT_NAMESPACE, slot, "-o", holder) == "node-a"
    pacer.close()


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


def test_writes_leave_their_connection_ready_for_the_next_request(
    apiserver: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A response handed back to the pool with its body unread poisons its connection: while the
    # response object lives, the next request on that connection fails with ResponseNotReady after
    # it was sent (a PATCH is then lost, a PUT or DELETE sent twice); once it is freed, the rest of
    # the body still on the socket is what the next request reads as its status line. Which one
    # happens depends on timing and on who holds the response; here every response is kept, as a
    # traceback or a reference cycle would keep it, so the outcome is the same every run.
    caplog.set_level(logging.DEBUG, logger="urllib3.connectionpool")
    namespace, node = unique("ns"), create_node(apiserver)
    apiserver.create_namespace(namespace)
    api = api_client(kubeconfig=str(apiserver.kubeconfig))
    kept: list[Any] = []
    send = api.rest_client.pool_manager.request

    def request(*args: Any, **kwargs: Any) -> Any:
        response = send(*args, **kwargs)
        kept.append(response)
        return response

    api.rest_client.pool_manager.request = request
    try:
        store = LeaseStore(api, namespace=namespace, clock=_Clock())
        leader = LeaderLease(api, namespace=namespace, holder="node-a", duration_seconds=30, clock=_Clock())
        warmth = NodeWarmth(api, node_name=node)
        for round_ in range(3):
            name = unique("modelcar-pull-slot")
            version = store.take(name, holder="node-a", duration_seconds=30, version=None)
            assert version is not None
            store.release(name, version=version)
            assert leader.hold()
            warmth.publish([f"sha256:{round_:064x}"])
            assert name not in store.list()
        leader.release()
    finally:
        api.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "urllib3.connectionpool"]
    started = [m for m in messages if m.startswith("Starting new")]
    troubled = [m for m in messages if "Retrying" in m or "dropped" in m]
    assert (len(started), troubled) == (1, []), messages
    assert len(kept) >= 3 * 6
