"""The agent's side of fleet pacing: several simulated nodes sharing one in-memory Lease store."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from prefetcher.adapters.leases import lease_state
from prefetcher.agent.pacer import Pacer, model_key
from prefetcher.core.model import DesiredModel, Plan, Pull, SkipReason
from prefetcher.core.pacing import PacingPolicy, digest_lease
from prefetcher.metrics import Metrics
from prefetcher.ports import LeaseState
from prefetcher.testing.fakes import FakeClock, FakeEvents
from prefetcher.testing.fleet import FakeFleetWarmth, FakeSlotLeases
from tests.support.planner_inputs import GIB, model

POLICY = PacingPolicy(enabled=True, seed_pulls=1, max_concurrent_pulls=2, lease_duration_seconds=30)


@dataclass
class Node:
    name: str
    pacer: Pacer
    events: FakeEvents
    metrics: Metrics


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def leases() -> FakeSlotLeases:
    return FakeSlotLeases()


@pytest.fixture
def warmth() -> FakeFleetWarmth:
    return FakeFleetWarmth()


@pytest.fixture
def node(clock: FakeClock, leases: FakeSlotLeases, warmth: FakeFleetWarmth):  # type: ignore[no-untyped-def]
    def make(name: str, policy: PacingPolicy = POLICY) -> Node:
        events, metrics = FakeEvents(), Metrics(CollectorRegistry())
        pacer = Pacer(
            leases=leases,
            warmth=warmth.for_node(name),
            node=name,
            clock=clock,
            events=events,
            metrics=metrics,
            policy=lambda: policy,
        )
        return Node(name, pacer, events, metrics)

    return make


def planned(*models: DesiredModel) -> Plan:
    return Plan(pulls=tuple(Pull(m, 2 * m.size_bytes) for m in models))


def start(n: Node, plan: Plan) -> list[str]:
    """What a pass on ``n`` starts: the plan's pulls whose turn it could take."""
    decided = n.pacer.decide(plan)
    return [p.model.ref.canonical() for p in decided.pulls if n.pacer.take(p)]


LLAMA, SMALL = model("llama", priority=5, size=140 * GIB), model("small", priority=1)


def test_with_one_seed_the_second_node_waits_until_the_first_holds_it_warm(node, clock) -> None:  # type: ignore[no-untyped-def]
    a, b = node("a"), node("b")
    assert start(a, planned(LLAMA)) == [LLAMA.ref.canonical()]
    decided = b.pacer.decide(planned(LLAMA))
    assert not decided.pulls
    (skip,) = decided.skips
    assert skip.reason is SkipReason.PACED and "fleet.seedPulls" in skip.message
    assert b.pacer.summary() == {"waiting": {"seed": 1}, "holding": 0}
    assert b.metrics.registry.get_sample_value("prefetcher_pacing_waiting_models", {"reason": "seed"}) == 1
    a.pacer.finished(LLAMA.ref.canonical(), succeeded=True)
    assert not start(b, planned(LLAMA)), "a success releases only after it was published as warm"
    a.pacer.settle([LLAMA])
    assert start(b, planned(LLAMA)) == [LLAMA.ref.canonical()]


def test_once_warm_up_to_max_concurrent_pulls_proceed_together(node, warmth) -> None:  # type: ignore[no-untyped-def]
    warmth.for_node("seed").publish([model_key(LLAMA)])
    started = [start(node(n), planned(LLAMA)) for n in "abc"]
    assert started == [[LLAMA.ref.canonical()], [LLAMA.ref.canonical()], []]


def test_a_holder_that_dies_loses_its_turn_when_its_lease_expires(node, clock) -> None:  # type: ignore[no-untyped-def]
    a, b = node("a"), node("b")
    assert start(a, planned(LLAMA))
    assert not start(b, planned(LLAMA))
    clock.advance(29)  # a is killed: it renews no more
    assert not start(b, planned(LLAMA))
    clock.advance(2)
    assert start(b, planned(LLAMA)) == [LLAMA.ref.canonical()]


def test_leases_are_renewed_while_the_pull_makes_progress_and_expire_when_it_stalls(node, clock) -> None:  # type: ignore[no-untyped-def]
    a, b = node("a"), node("b")
    ref = LLAMA.ref.canonical()
    assert start(a, planned(LLAMA))
    assert not start(b, planned(LLAMA))
    for _ in range(6):  # a minute of progress, renewed every ten seconds
        clock.advance(10)
        a.pacer.renew({ref: clock.monotonic()})
        assert not start(b, planned(LLAMA))
    stalled_since, waited = clock.monotonic(), []
    while not start(b, planned(LLAMA)):  # b polls as a waiting agent does
        clock.advance(10)
        a.pacer.renew({ref: stalled_since})
        waited.append(10)
    # renewed while progress is under a lease duration old (20 s), then expired a duration later
    assert sum(waited) == 50


def test_a_model_only_this_node_wants_is_never_delayed(node) -> None:  # type: ignore[no-untyped-def]
    a, b = node("a"), node("b")
    assert start(a, planned(LLAMA))
    assert start(b, planned(LLAMA, SMALL)) == [SMALL.ref.canonical()]


def test_past_the_deadline_a_node_pulls_anyway_and_says_so(node, clock) -> None:  # type: ignore[no-untyped-def]
    policy = PacingPolicy(enabled=True, lease_duration_seconds=3600, max_wait_seconds=600)
    a, b = node("a", policy), node("b", policy)
    assert start(a, planned(LLAMA))
    assert not start(b, planned(LLAMA))
    clock.advance(599)
    assert not start(b, planned(LLAMA))
    clock.advance(1)
    assert start(b, planned(LLAMA)) == [LLAMA.ref.canonical()]
    assert b.events.reasons() == ["PacingDeadlinePassed"]
    assert b.metrics.registry.get_sample_value("prefetcher_pacing_deadline_passed_total") == 1


def test_a_failed_pull_releases_its_turn_at_once(node) -> None:  # type: ignore[no-untyped-def]
    a, b = node("a"), node("b")
    assert start(a, planned(LLAMA))
    a.pacer.finished(LLAMA.ref.canonical(), succeeded=False)
    assert start(b, planned(LLAMA))


def test_losing_the_race_for_a_slot_means_waiting(node, leases) -> None:  # type: ignore[no-untyped-def]
    a, b = node("a"), node("b")
    decided_a, decided_b = a.pacer.decide(planned(LLAMA)), b.pacer.decide(planned(LLAMA))
    assert decided_a.pulls and decided_b.pulls  # both read the slot free
    assert a.pacer.take(decided_a.pulls[0])
    assert not b.pacer.take(decided_b.pulls[0])
    assert [s.holder for s in leases.leases.values()] == ["a"]


def test_an_unreachable_api_server_makes_pacing_fail_open(node, leases) -> None:  # type: ignore[no-untyped-def]
    a = node("a")
    leases.broken = True
    assert start(a, planned(LLAMA, SMALL)) == [LLAMA.ref.canonical(), SMALL.ref.canonical()]
    assert a.metrics.registry.get_sample_value("prefetcher_pacing_errors_total", {"operation": "read"}) == 1


def test_pacing_off_leaves_the_plan_as_it_is_and_touches_no_lease(node, leases, warmth) -> None:  # type: ignore[no-untyped-def]
    a, b = node("a", PacingPolicy(enabled=False)), node("b", PacingPolicy(enabled=False))
    plan = planned(LLAMA, SMALL)
    assert a.pacer.decide(plan) == plan and b.pacer.decide(plan) == plan
    assert start(a, plan) == start(b, plan) == [LLAMA.ref.canonical(), SMALL.ref.canonical()]
    a.pacer.settle([LLAMA])
    assert not leases.leases and not warmth.published


def test_a_pull_under_way_keeps_its_registry_slot_from_this_nodes_next_pull(node) -> None:  # type: ignore[no-untyped-def]
    a = node("a", PacingPolicy(enabled=True, max_concurrent_pulls_per_registry=1))
    assert start(a, planned(LLAMA)) == [LLAMA.ref.canonical()]
    assert not start(a, planned(SMALL))
    assert a.pacer.summary() == {"waiting": {"registry": 1}, "holding": 1}


def test_an_agent_that_stops_passes_its_turns_on_at_once(node) -> None:  # type: ignore[no-untyped-def]
    a, b = node("a"), node("b")
    assert start(a, planned(LLAMA))
    a.pacer.close()
    assert start(b, planned(LLAMA)) == [LLAMA.ref.canonical()]


@pytest.mark.parametrize(
    ("duration", "held"),
    [(0.0, 1), (-30.0, 1), (float("nan"), 1), (2_147_483_647.0, 3), (float("inf"), 3)],
)
def test_a_foreign_lease_with_a_junk_duration_on_the_seed_slot_expires_by_our_rules(  # type: ignore[no-untyped-def]
    node, clock, leases, duration, held
) -> None:
    slot = digest_lease(model_key(LLAMA), 0)
    leases.leases[slot] = LeaseState(slot, "intruder", "junk-1", duration)
    a = node("a")
    assert not start(a, planned(LLAMA))
    clock.advance(held * POLICY.lease_duration_seconds - 1)  # ours, or three of ours at most
    assert not start(a, planned(LLAMA))
    clock.advance(1)
    assert start(a, planned(LLAMA)) == [LLAMA.ref.canonical()]
    assert leases.leases[slot].holder == "a" and not a.events.reasons()  # a turn, not the deadline


@pytest.mark.parametrize(
    ("item", "holder", "duration"),
    [
        ({}, "", 0.0),
        ({"metadata": [], "spec": "x"}, "", 0.0),
        ({"spec": {"holderIdentity": 5, "leaseDurationSeconds": "60"}}, "", 0.0),
        ({"spec": {"holderIdentity": "b", "leaseDurationSeconds": True}}, "b", 0.0),
        ({"spec": {"holderIdentity": "b", "leaseDurationSeconds": 10**400}}, "b", float("inf")),
        ({"spec": {"holderIdentity": "b", "leaseDurationSeconds": 30, "renewTime": "2999-01-01"}}, "b", 30.0),
    ],
)
def test_a_lease_with_junk_fields_reads_without_error(item: dict, holder: str, duration: float) -> None:  # type: ignore[type-arg]
    state = lease_state(item)
    assert (state.holder, state.duration_seconds) == (holder, duration)


def test_a_dead_holders_slot_is_deleted_once_expired_even_when_no_node_wants_its_model(  # type: ignore[no-untyped-def]
    node, clock, leases
) -> None:
    a, b = node("a"), node("b")
    assert start(a, planned(LLAMA))  # a takes llama's seed slot, then is killed: it renews no more
    (slot,) = leases.leases
    assert start(b, planned(SMALL)) == [SMALL.ref.canonical()]  # b sees the slot live: kept
    assert slot in leases.leases
    b.pacer.finished(SMALL.ref.canonical(), succeeded=False)  # b's own slot goes at once
    clock.advance(31)
    b.pacer.decide(planned(SMALL))
    assert slot not in leases.leases


def test_a_renewed_slot_is_never_deleted_by_another_node(node, clock, leases) -> None:  # type: ignore[no-untyped-def]
    a, b = node("a"), node("b")
    ref = LLAMA.ref.canonical()
    assert start(a, planned(LLAMA))
    for _ in range(4):
        clock.advance(20)
        a.pacer.renew({ref: clock.monotonic()})
        b.pacer.decide(planned(SMALL))
    assert [s.holder for s in leases.leases.values()] == ["a"]
