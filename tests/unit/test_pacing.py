"""Fleet pull pacing: cases and the invariants stated in ``prefetcher.core.pacing``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prefetcher.core.pacing import (
    Candidate,
    LeaseRecord,
    PacingPolicy,
    Turn,
    WaitReason,
    digest_lease,
    pace,
    registry_lease,
)

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
ON = PacingPolicy(enabled=True, seed_pulls=1, max_concurrent_pulls=3, max_wait_seconds=600)


def candidate(key: str = DIGEST_A, registry: str = "registry.example:5000") -> Candidate:
    return Candidate(f"{registry}/m@{key}", key, registry)


def held(name: str, holder: str, *, seen_at: float = 100.0, duration: float = 60.0) -> LeaseRecord:
    return LeaseRecord(name, holder, "1", seen_at, duration)


def decide(candidates: list[Candidate], leases: list[LeaseRecord] = (), **kw: object):  # type: ignore[no-untyped-def,assignment]
    args: dict = dict(  # type: ignore[type-arg]
        leases={r.name: r for r in leases},
        warm=frozenset(),
        policy=ON,
        node="n1",
        now=120.0,
        waiting_since={},
    )
    return pace(candidates, **(args | kw))


def test_lease_names_are_valid_object_names_and_distinct_per_slot() -> None:
    assert digest_lease(DIGEST_A, 0) == "modelcar-pull-" + "a" * 64 + "-0"
    assert digest_lease(DIGEST_A, 1) != digest_lease(DIGEST_A, 0)
    assert digest_lease("reg.io/m:latest", 0).startswith("modelcar-pull-ref-")
    assert registry_lease("Registry.Example:5000", 2).startswith(
        "modelcar-pull-registry-registry-example-5000-"
    )
    assert registry_lease("a:5000", 0) != registry_lease("a-5000", 0)
    assert len(digest_lease("sha512:" + "c" * 128, 99)) <= 253


def test_the_first_node_takes_the_seed_slot() -> None:
    result = decide([candidate()])
    assert result.turns == (Turn(candidate().ref, (digest_lease(DIGEST_A, 0),)),)


def test_others_wait_for_the_seed_while_no_node_holds_the_digest_warm() -> None:
    result = decide([candidate()], [held(digest_lease(DIGEST_A, 0), "n2")])
    assert not result.turns
    (wait,) = result.waits
    assert wait.reason is WaitReason.SEED
    assert "fleet.seedPulls" in wait.message and "pulls anyway in 600s" in wait.message


def test_once_warm_somewhere_up_to_max_concurrent_pulls_proceed() -> None:
    leases = [held(digest_lease(DIGEST_A, 0), "n2"), held(digest_lease(DIGEST_A, 1), "n3")]
    result = decide([candidate()], leases, warm=frozenset({DIGEST_A}))
    assert result.turns == (Turn(candidate().ref, (digest_lease(DIGEST_A, 2),)),)
    leases.append(held(digest_lease(DIGEST_A, 2), "n4"))
    result = decide([candidate()], leases, warm=frozenset({DIGEST_A}))
    assert [w.reason for w in result.waits] == [WaitReason.FLEET]


def test_an_expired_lease_of_a_dead_holder_is_free() -> None:
    stale = held(digest_lease(DIGEST_A, 0), "n2", seen_at=50.0, duration=60.0)
    assert decide([candidate()], [stale], now=110.0).turns
    assert decide([candidate()], [stale], now=109.0).waits


def test_a_released_lease_and_this_nodes_own_lease_are_free() -> None:
    assert decide([candidate()], [held(digest_lease(DIGEST_A, 0), "")]).turns
    assert decide([candidate()], [held(digest_lease(DIGEST_A, 0), "n1")]).turns


def test_a_waiting_model_does_not_hold_back_a_lower_priority_one() -> None:
    result = decide([candidate(DIGEST_A), candidate(DIGEST_B)], [held(digest_lease(DIGEST_A, 0), "n2")])
    assert [t.ref for t in result.turns] == [candidate(DIGEST_B).ref]
    assert [w.ref for w in result.waits] == [candidate(DIGEST_A).ref]


def test_the_per_registry_cap_is_shared_by_models_of_one_registry() -> None:
    policy = PacingPolicy(enabled=True, max_concurrent_pulls_per_registry=1)
    result = decide([candidate(DIGEST_A), candidate(DIGEST_B)], policy=policy)
    assert [t.ref for t in result.turns] == [candidate(DIGEST_A).ref]
    assert result.turns[0].leases[1] == registry_lease("registry.example:5000", 0)
    assert [w.reason for w in result.waits] == [WaitReason.REGISTRY]
    other = candidate(DIGEST_B, registry="other.example")
    assert len(decide([candidate(DIGEST_A), other], policy=policy).turns) == 2


def test_past_the_deadline_a_model_pulls_anyway_without_a_lease() -> None:
    leases = [held(digest_lease(DIGEST_A, 0), "n2", seen_at=590.0)]
    ref = candidate().ref
    assert decide([candidate()], leases, waiting_since={ref: 0.0}, now=600.0).turns == (
        Turn(ref, overdue=True),
    )
    assert decide([candidate()], leases, waiting_since={ref: 1.0}, now=600.0).waits


def test_pacing_off_gives_every_model_a_turn_without_leases() -> None:
    leases = [held(digest_lease(DIGEST_A, 0), "n2")]
    result = decide([candidate(DIGEST_A), candidate(DIGEST_B)], leases, policy=PacingPolicy(enabled=False))
    assert result.turns == (Turn(candidate(DIGEST_A).ref), Turn(candidate(DIGEST_B).ref))
    assert not result.waits


# Properties: a fleet of nodes deciding one after another on the same shared leases.

KEYS = [f"sha256:{c * 64}" for c in "abcd"]
REGISTRIES = ["r1.example", "r2.example"]


@st.composite
def fleets(draw: st.DrawFn) -> dict:  # type: ignore[type-arg]
    policy = PacingPolicy(
        enabled=True,
        seed_pulls=draw(st.integers(1, 3)),
        max_concurrent_pulls=draw(st.integers(1, 5)),
        max_concurrent_pulls_per_registry=draw(st.integers(0, 4)),
        max_wait_seconds=1000.0,
    )
    nodes = [f"n{i}" for i in range(draw(st.integers(1, 8)))]
    wants = {
        n: draw(
            st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(REGISTRIES)), unique_by=lambda t: t[0])
        )
        for n in nodes
    }
    warm = frozenset(draw(st.lists(st.sampled_from(KEYS))))
    return dict(policy=policy, nodes=nodes, wants=wants, warm=warm)


def run_fleet(fleet: dict) -> tuple[dict[str, LeaseRecord], dict[str, list[Turn]]]:  # type: ignore[type-arg]
    leases: dict[str, LeaseRecord] = {}
    turns: dict[str, list[Turn]] = {}
    for node in fleet["nodes"]:
        candidates = [Candidate(f"{reg}/m@{key}", key, reg) for key, reg in fleet["wants"][node]]
        result = pace(
            candidates,
            leases=leases,
            warm=fleet["warm"],
            policy=fleet["policy"],
            node=node,
            now=10.0,
            waiting_since={},
        )
        for turn in result.turns:
            for name in turn.leases:
                assert not (name in leases and leases[name].live(10.0)), "a live slot was given out twice"
                leases[name] = LeaseRecord(name, node, "1", 10.0, 60.0)
        turns[node] = list(result.turns)
    return leases, turns


@given(fleets())
def test_never_more_pulls_of_a_digest_than_its_cap(fleet: dict) -> None:  # type: ignore[type-arg]
    _, turns = run_fleet(fleet)
    policy = fleet["policy"]
    for key in KEYS:
        pulling = [n for n, ts in turns.items() if any(t.ref.endswith(key) for t in ts)]
        cap = policy.max_concurrent_pulls if key in fleet["warm"] else policy.seed_pulls
        assert len(pulling) <= cap


@given(fleets())
def test_never_more_pulls_from_a_registry_than_its_cap(fleet: dict) -> None:  # type: ignore[type-arg]
    _, turns = run_fleet(fleet)
    cap = fleet["policy"].max_concurrent_pulls_per_registry
    for registry in REGISTRIES:
        count = sum(1 for ts in turns.values() for t in ts if t.ref.startswith(registry))
        assert cap == 0 or count <= cap


@given(fleets())
def test_a_model_only_one_node_wants_is_never_delayed_by_its_digest(fleet: dict) -> None:  # type: ignore[type-arg]
    _, turns = run_fleet(fleet)
    if fleet["policy"].max_concurrent_pulls_per_registry:
        return  # the registry cap is shared between models, see the module docstring
    for node, wants in fleet["wants"].items():
        alone = [k for k, _ in wants if all(k not in dict(w) for n, w in fleet["wants"].items() if n != node)]
        assert {k for k in alone} <= {t.ref.rpartition("@")[2] for t in turns[node]}


@given(fleets(), st.floats(0, 5000))
def test_nobody_waits_past_the_deadline(fleet: dict, waited: float) -> None:  # type: ignore[type-arg]
    leases, _ = run_fleet(fleet)
    policy = fleet["policy"]
    candidates = [
        Candidate(f"{reg}/m@{key}", key, reg) for key, reg in zip(KEYS, REGISTRIES * 2, strict=True)
    ]
    since = {c.ref: 10.0 - waited for c in candidates}
    result = pace(
        candidates,
        leases=leases,
        warm=fleet["warm"],
        policy=policy,
        node="late",
        now=10.0,
        waiting_since=since,
    )
    if waited >= policy.max_wait_seconds:
        assert not result.waits
    assert sorted([t.ref for t in result.turns] + [w.ref for w in result.waits]) == sorted(
        c.ref for c in candidates
    )


@given(fleets())
def test_pacing_off_is_the_identity(fleet: dict) -> None:  # type: ignore[type-arg]
    leases, _ = run_fleet(fleet)
    candidates = [
        Candidate(f"{reg}/m@{key}", key, reg) for key, reg in zip(KEYS, REGISTRIES * 2, strict=True)
    ]
    result = pace(
        candidates,
        leases=leases,
        warm=fleet["warm"],
        policy=PacingPolicy(enabled=False),
        node="x",
        now=10.0,
        waiting_since={},
    )
    assert result.turns == tuple(Turn(c.ref) for c in candidates) and not result.waits


def test_slots_of_this_nodes_pulls_under_way_are_not_shared_by_its_other_pulls() -> None:
    policy = PacingPolicy(enabled=True, max_concurrent_pulls_per_registry=1)
    busy = frozenset({registry_lease("registry.example:5000", 0)})
    result = decide([candidate(DIGEST_B)], policy=policy, busy=busy)
    assert [w.reason for w in result.waits] == [WaitReason.REGISTRY]
