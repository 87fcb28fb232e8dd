"""Hypothesis properties of the planner: the invariants stated in ``prefetcher.core.planner``."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from prefetcher.core.model import Budget, DiskState, Plan, SkipReason
from prefetcher.core.planner import plan
from tests.support.planner_inputs import GIB, cached_of, managed_of, model

MIB = 1024**2


@st.composite
def scenarios(draw: st.DrawFn) -> dict:  # type: ignore[type-arg]
    names = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=4), unique=True, max_size=12))
    models = [
        model(n, priority=draw(st.integers(0, 5)), size=draw(st.integers(1, 20 * 1024)) * MIB)
        for n in names
    ]
    desired = [m for m in models if draw(st.booleans())]
    cached_models = [m for m in models if draw(st.booleans())]
    cached = [cached_of(m, pinned=draw(st.integers(0, 9)) == 0) for m in cached_models]
    managed = {
        m.ref.canonical(): managed_of(m, last_desired_at=draw(st.floats(0, 1000)))
        for m in cached_models
        if draw(st.booleans())
    }
    in_use = frozenset(c.id for c in cached if draw(st.integers(0, 3)) == 0)
    total = draw(st.integers(10, 500)) * GIB
    disk = DiskState(total, draw(st.integers(0, total)))
    budget = Budget(
        max_usage_percent=draw(st.floats(1, 100)),
        unpack_factor=draw(st.floats(1, 3)),
        eviction_enabled=draw(st.booleans()),
        eviction_grace_seconds=draw(st.floats(0, 2000)),
    )
    return dict(desired=desired, cached=cached, in_use=in_use, disk=disk, budget=budget,
                now=1000.0, managed=managed)


def run(s: dict) -> Plan:  # type: ignore[type-arg]
    return plan(s["desired"], s["cached"], s["in_use"], s["disk"], s["budget"], now=s["now"],
                managed=s["managed"])


@settings(max_examples=400)
@given(scenarios())
def test_never_plans_usage_above_the_budget(s: dict) -> None:  # type: ignore[type-arg]
    result = run(s)
    freed = sum(e.freed_bytes for e in result.evictions)
    expected = s["disk"].used_bytes - freed + sum(p.cost_bytes for p in result.pulls)
    assert result.projected_bytes == expected
    if result.pulls:
        assert result.projected_bytes <= result.limit_bytes


@settings(max_examples=400)
@given(scenarios())
def test_never_evicts_in_use_pinned_unmanaged_or_desired(s: dict) -> None:  # type: ignore[type-arg]
    result = run(s)
    by_id = {c.id: c for c in s["cached"]}
    desired_refs = {m.ref.canonical() for m in s["desired"]}
    for eviction in result.evictions:
        image = by_id[eviction.image_id]
        assert image.id not in s["in_use"]
        assert not image.pinned
        assert image.refs <= s["managed"].keys()
        assert not image.refs & desired_refs
    if not s["budget"].eviction_enabled:
        assert result.evictions == ()


@settings(max_examples=400)
@given(scenarios())
def test_priority_first_fit(s: dict) -> None:  # type: ignore[type-arg]
    result = run(s)
    priorities = [p.model.priority for p in result.pulls]
    assert priorities == sorted(priorities, reverse=True)
    by_ref = {m.ref.canonical(): m for m in s["desired"]}
    for skip in result.skips:
        if skip.reason is not SkipReason.BUDGET:
            continue
        skipped = by_ref[skip.ref]
        for pull in result.pulls:
            if pull.model.priority < skipped.priority:
                assert pull.cost_bytes < s["budget"].pull_cost(skipped.size_bytes)


@settings(max_examples=200)
@given(scenarios(), st.randoms())
def test_deterministic_whatever_the_input_order(s: dict, rnd) -> None:  # type: ignore[no-untyped-def,type-arg]
    first = run(s)
    shuffled = dict(s, desired=list(s["desired"]), cached=list(s["cached"]))
    rnd.shuffle(shuffled["desired"])
    rnd.shuffle(shuffled["cached"])
    assert run(shuffled) == first


@given(scenarios())
def test_every_desired_model_is_accounted_for_once(s: dict) -> None:  # type: ignore[type-arg]
    result = run(s)
    seen = [p.model.ref.canonical() for p in result.pulls] + [m.ref.canonical() for m in result.warm]
    seen += [k.ref for k in result.skips]
    assert sorted(seen) == sorted({m.ref.canonical() for m in s["desired"]})
