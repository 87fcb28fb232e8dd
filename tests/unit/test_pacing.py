"""Fleet pull pacing: cases and the invariants stated in ``prefetcher.core.pacing``."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefetcher.core.pacing import (
    Candidate,
    LeaseRecord,
    PacingPolicy,
    Turn,
    WaitReason,
    digest_lease,
    held_for,
    pace,
    registry_lease,
    warm_keys,
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


# What other nodes (or anyone with rights in the namespace or on Nodes) wrote is untrusted input.
OWN = ON.lease_duration_seconds


@pytest.mark.parametrize(
    ("declared", "counted"),
    [
        (30.0, 30.0),
        (OWN, OWN),
        (3 * OWN, 3 * OWN),
        (0.0, OWN),  # missing: the adapter reads it as 0
        (-5.0, OWN),
        (math.nan, OWN),
        (2_147_483_647.0, 3 * OWN),  # the largest the API server takes: 68 years
        (math.inf, 3 * OWN),
    ],
)
def test_a_lease_counts_as_held_for_its_duration_clamped(declared: float, counted: float) -> None:
    assert held_for(declared, OWN) == counted


@pytest.mark.parametrize("declared", [0.0, -1.0, math.nan, 2_147_483_647.0, math.inf])
def test_a_foreign_holder_with_a_junk_duration_blocks_a_slot_no_longer_than_three_of_ours(
    declared: float,
) -> None:
    intruder = LeaseRecord(digest_lease(DIGEST_A, 0), "intruder", "7", 100.0, declared)
    assert not decide([candidate()], [intruder], now=100.0).turns
    (turn,) = decide([candidate()], [intruder], now=100.0 + 3 * OWN).turns
    assert turn.leases == (intruder.name,) and not turn.overdue


def test_leases_named_like_slots_but_not_slots_block_nothing() -> None:
    slot = digest_lease(DIGEST_A, 0)
    lookalikes = [held(n, "intruder") for n in (slot + "-x", slot[:-2], slot.upper(), "x" + slot)]
    (turn,) = decide([candidate()], lookalikes).turns
    assert turn.leases == (slot,)


def test_a_lease_without_a_holder_is_free_whatever_its_duration() -> None:
    released = LeaseRecord(digest_lease(DIGEST_A, 0), "", "7", 119.0, 2_147_483_647.0)
    assert decide([candidate()], [released]).turns


junk_leases = st.builds(
    LeaseRecord,
    name=st.sampled_from([digest_lease(k, i) for k in (DIGEST_A, DIGEST_B) for i in range(3)]),
    holder=st.sampled_from(["", "n1", "n2", "intruder", " "]),
    version=st.text(max_size=3),
    seen_at=st.floats(allow_nan=False, min_value=-1e12, max_value=1e12),
    duration_seconds=st.floats() | st.sampled_from([0.0, -1.0, 2_147_483_647.0]),
)


@given(
    st.lists(junk_leases, max_size=8),
    st.lists(st.sampled_from([DIGEST_A, DIGEST_B, "reg.io/m:latest"]), min_size=1, max_size=4, unique=True),
    st.floats(min_value=0, max_value=1e6),
)
def test_junk_leases_never_break_pacing_its_order_or_block_past_their_expiry(
    records: list[LeaseRecord], keys: list[str], later: float
) -> None:
    candidates = [candidate(k) for k in keys]
    leases = {r.name: r for r in records}
    result = decide(candidates, list(leases.values()), now=120.0)
    decided = [t.ref for t in result.turns] + [w.ref for w in result.waits]
    assert sorted(decided) == sorted(c.ref for c in candidates)
    turned = {t.ref for t in result.turns}
    assert [t.ref for t in result.turns] == [c.ref for c in candidates if c.ref in turned]  # priority kept
    # Once every record is older than three of our durations, nothing a foreign holder wrote blocks.
    expired = max((r.seen_at for r in records), default=0.0) + 3 * OWN + later
    assert len(decide(candidates, list(leases.values()), now=max(expired, 120.0)).turns) == len(candidates)


DIGEST_512 = "sha512:" + "c" * 128


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("", set()),
        (DIGEST_A, {DIGEST_A}),
        (f"{DIGEST_A},{DIGEST_B}", {DIGEST_A, DIGEST_B}),
        (f" {DIGEST_A} , ,,{DIGEST_512}", {DIGEST_A, DIGEST_512}),
        ("registry.example:5000/models/m:latest", {"registry.example:5000/models/m:latest"}),
        ("sha256:" + "A" * 64, set()),  # upper case: not how a digest is written
        ("sha256:" + "a" * 63, set()),
        ("sha256:" + "a" * 65, set()),
        ("md5:" + "a" * 32, set()),
        (f"{DIGEST_A}x", set()),
        (f"reg.io/m@{DIGEST_A}", set()),  # a pinned model's key is its digest alone
        ("reg.io/m", set()),  # not canonical: that would be reg.io/m:latest
        ("everything,*,true,1,warm", set()),
        ("\x00\ud800", set()),
        ("sha256:" + "a" * 64 * 1000, set()),
        (",".join([DIGEST_B, "junk" * 50_000]), {DIGEST_B}),
    ],
)
def test_only_valid_entries_of_a_warm_annotation_count(text: str, keys: set[str]) -> None:
    assert warm_keys(text) == keys


@given(
    st.lists(st.text(max_size=80) | st.sampled_from([DIGEST_A, DIGEST_B, "sha256:"])), st.text(max_size=200)
)
def test_junk_in_a_warm_annotation_never_makes_a_model_warm_and_never_hides_a_valid_entry(
    entries: list[str], noise: str
) -> None:
    text = ",".join([*entries, noise])
    keys = warm_keys(text)
    assert keys <= {e.strip() for e in text.split(",")}
    assert all(k.startswith(("sha256:", "sha512:")) or "/" in k for k in keys)
    if DIGEST_A in entries:
        assert DIGEST_A in keys
    pacing = decide([candidate()], warm=keys)
    assert pacing.turns  # whatever is warm, the first node still gets its turn
