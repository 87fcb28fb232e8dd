"""Example-based tests of the planner: each case states one rule in numbers."""

from __future__ import annotations

from prefetcher.core.model import Budget, DiskState, EvictionReason, SkipReason
from prefetcher.core.planner import merge_desired, plan
from tests.support.planner_inputs import GIB, cached_of, managed_of, model

DISK = DiskState(total_bytes=100 * GIB, used_bytes=10 * GIB)
BUDGET = Budget(max_usage_percent=80, unpack_factor=2.0)


def test_pulls_what_fits_in_priority_order() -> None:
    low, high = model("low", priority=1, size=5 * GIB), model("high", priority=9, size=5 * GIB)
    result = plan([low, high], [], frozenset(), DISK, BUDGET, now=0, managed={})
    assert [p.model.ref for p in result.pulls] == [high.ref, low.ref]
    assert [p.cost_bytes for p in result.pulls] == [10 * GIB, 10 * GIB]
    assert result.projected_bytes == 30 * GIB
    assert result.limit_bytes == 80 * GIB


def test_lower_priority_model_is_skipped_for_budget_with_figures() -> None:
    big, small = model("big", priority=5, size=30 * GIB), model("small", priority=1, size=10 * GIB)
    result = plan([big, small], [], frozenset(), DISK, BUDGET, now=0, managed={})
    assert [p.model.ref for p in result.pulls] == [big.ref]
    (skip,) = result.skips
    assert skip.reason is SkipReason.BUDGET
    assert skip.ref == small.ref.canonical()
    assert "20.0 GiB" in skip.message and "10.0 GiB free" in skip.message


def test_model_larger_than_the_whole_budget_is_too_large() -> None:
    huge = model("huge", size=41 * GIB)
    result = plan([huge], [], frozenset(), DISK, BUDGET, now=0, managed={})
    assert result.pulls == ()
    assert result.skips[0].reason is SkipReason.TOO_LARGE


def test_cached_model_is_warm_and_costs_nothing() -> None:
    m = model("warm")
    result = plan([m], [cached_of(m)], frozenset(), DISK, BUDGET, now=0, managed={})
    assert result.warm == (m,) and result.pulls == () and result.projected_bytes == DISK.used_bytes


def test_no_longer_desired_managed_image_is_evicted_after_grace() -> None:
    old = model("old")
    budget = Budget(max_usage_percent=80, eviction_grace_seconds=100)
    args = ([], [cached_of(old)], frozenset(), DISK, budget)
    managed = {old.ref.canonical(): managed_of(old, last_desired_at=1000)}
    assert plan(*args, now=1050, managed=managed).evictions == ()
    (eviction,) = plan(*args, now=1100, managed=managed).evictions
    assert eviction.reason is EvictionReason.NOT_DESIRED
    assert eviction.freed_bytes == 2 * GIB


def test_images_in_use_pinned_or_not_ours_are_never_evicted() -> None:
    a, b, c, d = model("a"), model("b"), model("c"), model("d")
    cached = [cached_of(a), cached_of(b, pinned=True), cached_of(c), cached_of(d, extra_refs=("x/y:1",))]
    managed = {m.ref.canonical(): managed_of(m) for m in (a, b, d)}
    in_use = frozenset({cached_of(a).id})
    result = plan([], cached, in_use, DISK, BUDGET, now=10**9, managed=managed)
    assert result.evictions == ()


def test_evicts_to_make_room_only_when_that_makes_the_pull_fit() -> None:
    old = model("old", size=10 * GIB)
    new = model("new", priority=1, size=15 * GIB)
    disk = DiskState(total_bytes=100 * GIB, used_bytes=70 * GIB)
    budget = Budget(max_usage_percent=80, eviction_grace_seconds=10**6)
    managed = {old.ref.canonical(): managed_of(old, last_desired_at=5)}
    result = plan([new], [cached_of(old)], frozenset(), disk, budget, now=10, managed=managed)
    assert [e.reason for e in result.evictions] == [EvictionReason.MAKE_ROOM]
    assert [p.model for p in result.pulls] == [new]
    assert result.projected_bytes == 70 * GIB - 20 * GIB + 30 * GIB
    disabled = Budget(max_usage_percent=80, eviction_enabled=False)
    result = plan([new], [cached_of(old)], frozenset(), disk, disabled, now=10, managed=managed)
    assert result.evictions == () and result.skips[0].reason is SkipReason.BUDGET


def test_backoff_and_in_flight_models_are_skipped_with_reasons() -> None:
    a, b = model("a"), model("b")
    result = plan(
        [a, b], [], frozenset(), DISK, BUDGET, now=100, managed={},
        backoff_until={a.ref.canonical(): 160.0}, in_flight={b.ref.canonical(): 2 * GIB},
    )
    reasons = {s.ref: (s.reason, s.message) for s in result.skips}
    assert reasons[a.ref.canonical()] == (SkipReason.BACKOFF, "last attempt failed; retry in 60s")
    assert reasons[b.ref.canonical()][0] is SkipReason.IN_FLIGHT
    assert result.projected_bytes == DISK.used_bytes + 2 * GIB


def test_in_flight_bytes_count_against_the_budget() -> None:
    m = model("m", size=30 * GIB)
    result = plan([m], [], frozenset(), DISK, BUDGET, now=0, managed={}, in_flight={"other": 20 * GIB})
    assert result.pulls == () and result.skips[0].reason is SkipReason.BUDGET


def test_duplicates_merge_to_highest_priority_and_all_sources() -> None:
    a1, a2 = model("a", priority=1), model("a", priority=7)
    a2 = type(a2)(a2.ref, 7, a2.size_bytes, ("isvc ns/other",))
    (merged,) = merge_desired([a1, a2])
    assert merged.priority == 7
    assert merged.sources == ("isvc ns/other", "test a")


def test_a_negative_size_is_never_planned_and_cannot_make_room_for_others() -> None:
    liar = model("liar", priority=9, size=-20 * 1024 * GIB)
    a, b = model("a", priority=5, size=20 * GIB), model("b", priority=1, size=20 * GIB)
    result = plan([liar, a, b], [], frozenset(), DISK, BUDGET, now=0, managed={})
    assert [p.model.ref for p in result.pulls] == [a.ref]
    assert [(s.ref, s.reason) for s in result.skips] == [
        (liar.ref.canonical(), SkipReason.UNRESOLVED),
        (b.ref.canonical(), SkipReason.BUDGET),
    ]
    assert result.projected_bytes <= result.limit_bytes


def test_an_image_whose_runtime_record_changed_since_the_agents_pull_is_not_evicted() -> None:
    old = model("old")
    claim = managed_of(old)
    relisted = cached_of(old)
    changed = type(relisted)(relisted.id, relisted.repo_digests, (), relisted.size_bytes + 1)
    args = ([], [changed], frozenset(), DISK, BUDGET)
    assert plan(*args, now=10**9, managed={old.ref.canonical(): claim}).evictions == ()
    args = ([], [relisted], frozenset(), DISK, BUDGET)
    assert len(plan(*args, now=10**9, managed={old.ref.canonical(): claim}).evictions) == 1
