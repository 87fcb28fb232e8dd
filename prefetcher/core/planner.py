"""The planner: which images to pull, which to evict and which models to skip, and why.

``plan`` is a pure function of its inputs. It holds these invariants, each checked by property
tests in ``tests/unit/test_planner_properties.py``:

* when it plans a pull, projected usage (used + in flight - evicted + planned pulls) stays within
  the budget;
* it never evicts an image that a container uses, that is pinned, that the agent did not pull, or
  that also carries a name the agent did not pull (CRI ``RemoveImage`` removes every name); "the
  agent pulled it" means the runtime still reports the id and size it reported after that pull;
* a model whose size is negative (a lying manifest) is never planned, so no size can lower the
  projected usage;
* it considers models in priority order (highest first) and fills first-fit, so a lower-priority
  model is pulled past a skipped higher-priority one only when it is smaller;
* the same inputs in any order give the same plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prefetcher.core.backoff import retry_note
from prefetcher.core.model import (
    Budget,
    CachedImage,
    DesiredModel,
    DiskState,
    Eviction,
    EvictionReason,
    ManagedImage,
    Plan,
    Pull,
    Skip,
    SkipReason,
)
from prefetcher.core.units import format_bytes


@dataclass(frozen=True)
class _Candidate:
    image: CachedImage
    managed: ManagedImage


def plan(
    desired: Sequence[DesiredModel],
    cached: Sequence[CachedImage],
    in_use: frozenset[str],
    disk: DiskState,
    budget: Budget,
    *,
    now: float,
    managed: Mapping[str, ManagedImage],
    backoff_until: Mapping[str, float] | None = None,
    in_flight: Mapping[str, int] | None = None,
) -> Plan:
    """Plan one reconcile pass; see the module docstring for the invariants."""
    in_flight = in_flight or {}
    models = merge_desired(desired)
    warm, pending, skips = _classify(models, cached, now, backoff_until or {}, in_flight)
    limit = budget.limit_bytes(disk)
    limit_text = format_bytes(limit)
    projected = disk.used_bytes + sum(in_flight.values())
    pool = _evictable(cached, in_use, managed, {m.ref.canonical() for m in models})
    if not budget.eviction_enabled:
        pool = []
    # One pass, no equality tests: comparing frozen dataclasses made this quadratic on large nodes.
    expired = [now - c.managed.last_desired_at >= budget.eviction_grace_seconds for c in pool]
    evictions = [_evict(c, EvictionReason.NOT_DESIRED) for c, gone in zip(pool, expired, strict=True) if gone]
    pool = [c for c, gone in zip(pool, expired, strict=True) if not gone]
    projected -= sum(e.freed_bytes for e in evictions)
    pulls: list[Pull] = []
    for model in pending:
        cost = budget.pull_cost(model.size_bytes)
        ref = model.ref.canonical()
        if cost < 0:
            msg = f"the registry reported a negative size ({model.size_bytes} bytes)"
            skips.append(Skip(ref, SkipReason.UNRESOLVED, msg, model.sources))
            continue
        if cost > limit:
            msg = f"needs {format_bytes(cost)}, more than the whole budget of {limit_text}"
            skips.append(Skip(ref, SkipReason.TOO_LARGE, msg, model.sources))
            continue
        room = _make_room(pool, projected + cost - limit)
        if room is None:
            skips.append(
                Skip(
                    ref, SkipReason.BUDGET, _budget_message(cost, projected, limit_text, limit), model.sources
                )
            )
            continue
        del pool[: len(room)]  # _make_room takes the oldest candidates: a prefix of the pool
        for candidate in room:
            evictions.append(_evict(candidate, EvictionReason.MAKE_ROOM))
            projected -= candidate.managed.cost_bytes
        pulls.append(Pull(model, cost))
        projected += cost
    return Plan(
        pulls=tuple(pulls),
        evictions=tuple(evictions),
        skips=tuple(skips),
        warm=tuple(warm),
        limit_bytes=limit,
        used_bytes=disk.used_bytes,
        projected_bytes=projected,
    )


def _classify(
    models: list[DesiredModel],
    cached: Sequence[CachedImage],
    now: float,
    backoff_until: Mapping[str, float],
    in_flight: Mapping[str, int],
) -> tuple[list[DesiredModel], list[DesiredModel], list[Skip]]:
    """Split models into warm (cached), pending (to pull) and skipped (in flight, backing off)."""
    cached_refs = {ref for image in cached for ref in image.refs}
    warm: list[DesiredModel] = []
    pending: list[DesiredModel] = []
    skips: list[Skip] = []
    for model in models:
        ref = model.ref.canonical()
        if ref in cached_refs:
            warm.append(model)
        elif ref in in_flight:
            skips.append(Skip(ref, SkipReason.IN_FLIGHT, "pull in progress", model.sources))
        elif backoff_until.get(ref, 0.0) > now:
            wait = backoff_until[ref] - now
            skips.append(Skip(ref, SkipReason.BACKOFF, retry_note(wait), model.sources))
        else:
            pending.append(model)
    return warm, pending, skips


def merge_desired(desired: Iterable[DesiredModel]) -> list[DesiredModel]:
    """One entry per reference (highest priority, all sources), highest priority first."""
    merged: dict[str, DesiredModel] = {}
    for model in desired:
        ref = model.ref.canonical()
        seen = merged.get(ref)
        if seen is None:
            merged[ref] = model
            continue
        sources = tuple(sorted(set(seen.sources) | set(model.sources)))
        top = max(seen.priority, model.priority)
        merged[ref] = DesiredModel(seen.ref, top, max(seen.size_bytes, model.size_bytes), sources)
    return sorted(merged.values(), key=lambda m: (-m.priority, m.ref.canonical()))


def _evictable(
    cached: Sequence[CachedImage],
    in_use: frozenset[str],
    managed: Mapping[str, ManagedImage],
    desired_refs: set[str],
) -> list[_Candidate]:
    """Images the agent alone pulled, not desired, not pinned and not used: oldest wanted first."""
    candidates = []
    for image in cached:
        refs = image.refs
        owned = [managed[r] for r in sorted(refs) if r in managed]
        if not owned or image.pinned or len(owned) != len(refs):
            continue
        if image.id in in_use or refs & in_use or refs & desired_refs:
            continue
        # Ownership is proven by the runtime's own record, not only claimed: same id, same size.
        if any(m.image_id != image.id or m.image_size_bytes != image.size_bytes for m in owned):
            continue
        newest = max(owned, key=lambda m: m.last_desired_at)
        candidates.append(_Candidate(image, newest))
    return sorted(candidates, key=lambda c: (c.managed.last_desired_at, c.image.id))


def _make_room(pool: list[_Candidate], needed: int) -> list[_Candidate] | None:
    """The fewest oldest candidates freeing ``needed`` bytes, or None when the pool cannot."""
    chosen: list[_Candidate] = []
    for candidate in pool:
        if needed <= 0:
            break
        chosen.append(candidate)
        needed -= candidate.managed.cost_bytes
    return chosen if needed <= 0 else None


def _evict(candidate: _Candidate, reason: EvictionReason) -> Eviction:
    refs = tuple(sorted(candidate.image.refs))
    return Eviction(candidate.image.id, refs, reason, candidate.managed.cost_bytes)


def _budget_message(cost: int, projected: int, limit_text: str, limit: int) -> str:
    free = max(limit - projected, 0)
    return (
        f"needs {format_bytes(cost)} on the image filesystem, "
        f"{format_bytes(free)} free under the budget of {limit_text}"
    )
