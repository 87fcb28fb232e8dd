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
from operator import attrgetter

from prefetcher.core.backoff import backoff_skip
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
    refs: frozenset[str]
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
    merged = _merge(desired)
    names = [image.refs for image in cached]
    warm, pending, skips = _classify(_by_priority(merged), names, now, backoff_until or {}, in_flight)
    limit = budget.limit_bytes(disk)
    projected = disk.used_bytes + sum(in_flight.values())
    pool = _evictable(cached, names, in_use, managed, merged) if budget.eviction_enabled else []
    # One pass, no equality tests: comparing frozen dataclasses made this quadratic on large nodes.
    expired = [now - c.managed.last_desired_at >= budget.eviction_grace_seconds for c in pool]
    evictions = [_evict(c, EvictionReason.NOT_DESIRED) for c, gone in zip(pool, expired, strict=True) if gone]
    pool = [c for c, gone in zip(pool, expired, strict=True) if not gone]
    projected -= sum(e.freed_bytes for e in evictions)
    pulls, projected = _fill(
        pending, pool, projected=projected, limit=limit, budget=budget, evictions=evictions, skips=skips
    )
    return Plan(
        pulls=tuple(pulls),
        evictions=tuple(evictions),
        skips=tuple(skips),
        warm=tuple(warm),
        limit_bytes=limit,
        used_bytes=disk.used_bytes,
        projected_bytes=projected,
    )


def _fill(
    pending: list[tuple[str, DesiredModel]],
    pool: list[_Candidate],
    *,
    projected: int,
    limit: int,
    budget: Budget,
    evictions: list[Eviction],
    skips: list[Skip],
) -> tuple[list[Pull], int]:
    """First-fit in priority order: the pulls and the projected usage; appends evictions, skips."""
    pulls: list[Pull] = []
    limit_text = format_bytes(limit)
    # Budget skips are most of a plan on a full node: look these up once, not once per model.
    pull_cost, over_budget = budget.pull_cost, SkipReason.BUDGET
    notes: dict[int, str] = {}  # the budget message by cost, valid while ``projected`` stays put
    for ref, model in pending:
        cost = pull_cost(model.size_bytes)
        if cost < 0:
            msg = f"the registry reported a negative size ({model.size_bytes} bytes)"
            skips.append(Skip(ref, SkipReason.UNRESOLVED, msg, model.sources))
        elif cost > limit:
            msg = f"needs {format_bytes(cost)}, more than the whole budget of {limit_text}"
            skips.append(Skip(ref, SkipReason.TOO_LARGE, msg, model.sources))
        # An empty pool, the common case on a full node, needs no call to know it frees nothing.
        elif (projected + cost > limit and not pool) or (
            room := _make_room(pool, projected + cost - limit)
        ) is None:
            note = notes.get(cost)
            if note is None:
                note = notes[cost] = _budget_message(cost, projected, limit_text, limit)
            skips.append(Skip(ref, over_budget, note, model.sources))
        else:
            del pool[: len(room)]  # _make_room takes the oldest candidates: a prefix of the pool
            for candidate in room:
                evictions.append(_evict(candidate, EvictionReason.MAKE_ROOM))
                projected -= candidate.managed.cost_bytes
            pulls.append(Pull(model, cost))
            projected += cost
            notes.clear()
    return pulls, projected


def _classify(
    models: list[DesiredModel],
    names: list[frozenset[str]],
    now: float,
    backoff_until: Mapping[str, float],
    in_flight: Mapping[str, int],
) -> tuple[list[DesiredModel], list[tuple[str, DesiredModel]], list[Skip]]:
    """Split models into warm (cached), pending (to pull, with its reference) and skipped."""
    cached_refs = frozenset[str]().union(*names)
    warm: list[DesiredModel] = []
    pending: list[tuple[str, DesiredModel]] = []
    skips: list[Skip] = []
    for model in models:
        ref = model.ref.canonical()
        if ref in cached_refs:
            warm.append(model)
        elif ref in in_flight:
            skips.append(Skip(ref, SkipReason.IN_FLIGHT, "pull in progress", model.sources))
        elif backoff_until and (waiting := backoff_skip(ref, model.sources, until=backoff_until, now=now)):
            skips.append(waiting)
        else:
            pending.append((ref, model))
    return warm, pending, skips


def merge_desired(desired: Iterable[DesiredModel]) -> list[DesiredModel]:
    """One entry per reference (highest priority, all sources), highest priority first."""
    return _by_priority(_merge(desired))


def _merge(desired: Iterable[DesiredModel]) -> dict[str, DesiredModel]:
    """One entry per canonical reference: the highest priority and size, and every source."""
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
    return merged


def _by_priority(merged: Mapping[str, DesiredModel]) -> list[DesiredModel]:
    """Highest priority first, then by reference.

    Two sorts on keys Python compares in C (the reference strings, then the priorities; a sort
    with ``reverse=True`` is still stable) cost half of one sort on a per-model key tuple.
    """
    models = [merged[ref] for ref in sorted(merged)]
    models.sort(key=attrgetter("priority"), reverse=True)
    return models


def _evictable(
    cached: Sequence[CachedImage],
    names: list[frozenset[str]],
    in_use: frozenset[str],
    managed: Mapping[str, ManagedImage],
    desired: Mapping[str, DesiredModel],
) -> list[_Candidate]:
    """Images the agent alone pulled, not desired, not pinned and not used: oldest wanted first."""
    candidates = []
    for image, refs in zip(cached, names, strict=True):
        if image.pinned or not refs or image.id in in_use or refs & in_use:
            continue
        if not desired.keys().isdisjoint(refs):
            continue
        owned = [managed[r] for r in sorted(refs) if r in managed]
        if len(owned) != len(refs):
            continue
        # Ownership is proven by the runtime's own record, not only claimed: same id, same size.
        if any(m.image_id != image.id or m.image_size_bytes != image.size_bytes for m in owned):
            continue
        newest = max(owned, key=lambda m: m.last_desired_at)
        candidates.append(_Candidate(image, refs, newest))
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
    refs = tuple(sorted(candidate.refs))
    return Eviction(candidate.image.id, refs, reason, candidate.managed.cost_bytes)


def _budget_message(cost: int, projected: int, limit_text: str, limit: int) -> str:
    free = max(limit - projected, 0)
    return (
        f"needs {format_bytes(cost)} on the image filesystem, "
        f"{format_bytes(free)} free under the budget of {limit_text}"
    )
