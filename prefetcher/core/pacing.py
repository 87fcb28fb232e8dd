"""Fleet-wide pull pacing: which of this node's planned pulls may start now, which wait, and why.

Nodes take turns per model digest through *slots*. A slot is one ``coordination.k8s.io`` Lease in
the agent's namespace, named by ``digest_lease(key, i)``; the node that holds it live may pull.

* While no node holds the digest warm, only slots ``0 .. seedPulls-1`` exist: at most
  ``seedPulls`` nodes pull it from the origin. Once one node holds it warm, slots
  ``0 .. maxConcurrentPulls-1`` exist. With ``maxConcurrentPullsPerRegistry`` set, a pull also
  needs one of that many slots of its registry.
* A slot is free when its Lease is missing, released (no holder), held by this node, or expired.
  Expiry is judged on this node's monotonic clock, as client-go's leader election does: a Lease
  whose version has not changed for its duration since this node first saw that version is dead,
  so clocks that disagree between nodes do not matter.
* ``pace`` only decides from what was read; taking a slot is an atomic create (409 when another
  node was first) or an update carrying the read ``resourceVersion`` (409 when it changed), so two
  nodes that both saw a slot free cannot both take it. The loser waits for the next pass.
* A model that has waited ``maxWaitSeconds`` pulls anyway, without slots (the caller reports it).
* Candidates are considered in the order given (the planner's priority order); a waiting model does
  not hold back a lower-priority one that has a turn.
* Pacing off gives every candidate a turn without slots: the agent behaves as it did without it.

A model no other node wants never waits: nobody else holds its digest's slots. Only the optional
per-registry cap is shared between models.

What other nodes publish is read as untrusted:

* ``warm_keys`` reads a node's warm annotation: an entry counts only when it is a digest
  (``sha256:`` and 64 lowercase hex digits, or ``sha512:`` and 128) or a reference in the
  canonical form ``model_key`` gives an unpinned model; anything else is ignored, so junk cannot
  make a model look warm (and raise its cap from ``seedPulls`` to ``maxConcurrentPulls``).
* A slot Lease counts as held for ``held_for`` its declared ``leaseDurationSeconds``: missing, zero,
  negative or not a number reads as this node's ``fleet.leaseDurationSeconds``; more than
  ``MAX_DURATION_FACTOR`` times that (infinity included) is clamped to it. A holder renews every
  third of its duration, so a live holder configured up to that long is never taken for dead, and
  a dead or foreign one with a huge duration blocks its slot no longer. ``renewTime`` is not read
  at all (expiry is judged by version changes on this node's clock), so a ``renewTime`` missing or
  in the far future changes nothing. A Lease without a holder is free; Leases whose names are not
  exactly a slot's are not looked at. A writer that keeps renewing a slot it does not pull under
  holds it like a live node: ``maxWaitSeconds`` bounds that wait, as any other.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from prefetcher.core.refs import parse_reference
from prefetcher.errors import InvalidReferenceError

LEASE_PREFIX = "modelcar-pull"
MAX_DURATION_FACTOR = 3
_NOT_NAME = re.compile(r"[^a-z0-9-]+")
_DIGEST_KEY = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")


@dataclass(frozen=True)
class PacingPolicy:
    """The ``fleet`` settings, as the core needs them."""

    enabled: bool = False
    seed_pulls: int = 1
    max_concurrent_pulls: int = 10
    max_concurrent_pulls_per_registry: int = 0
    lease_duration_seconds: float = 60.0
    max_wait_seconds: float = 3600.0


@dataclass(frozen=True)
class LeaseRecord:
    """A slot's Lease as this node last read it; ``seen_at`` is when this ``version`` was first seen."""

    name: str
    holder: str
    version: str
    seen_at: float
    duration_seconds: float

    def live(self, now: float, own_seconds: float | None = None) -> bool:
        """Held, and renewed (a new version seen) within its duration (``held_for`` ``own_seconds``)."""
        declared = self.duration_seconds
        duration = declared if own_seconds is None else held_for(declared, own_seconds)
        return bool(self.holder) and now - self.seen_at < duration


def held_for(declared: float, own: float) -> float:
    """How long a Lease declaring ``declared`` seconds counts as held by a node whose own duration is
    ``own``; see the module docstring."""
    if math.isnan(declared) or declared <= 0:
        return own
    return min(declared, MAX_DURATION_FACTOR * own)


def warm_keys(text: str) -> frozenset[str]:
    """The valid keys of a node's warm annotation (comma-separated); junk entries are ignored."""
    return frozenset(key for entry in text.split(",") if _valid_key(key := entry.strip()))


def _valid_key(key: str) -> bool:
    if _DIGEST_KEY.fullmatch(key):
        return True
    if not key or len(key) > 512 or "@" in key:  # a pinned model's key is its digest alone
        return False
    try:
        return parse_reference(key).canonical() == key
    except InvalidReferenceError:
        return False


@dataclass(frozen=True)
class Candidate:
    """A planned pull: its reference, the key slots are named after (digest), and its registry."""

    ref: str
    key: str
    registry: str


class WaitReason(StrEnum):
    """Why a pull waits for its turn; a bounded label for metrics."""

    SEED = "seed"
    FLEET = "fleet"
    REGISTRY = "registry"


@dataclass(frozen=True)
class Turn:
    """A pull that may start, holding ``leases``; ``overdue`` when it waited past the deadline."""

    ref: str
    leases: tuple[str, ...] = ()
    overdue: bool = False


@dataclass(frozen=True)
class Wait:
    """A pull that waits for a turn, and why."""

    ref: str
    reason: WaitReason
    message: str


@dataclass(frozen=True)
class Pacing:
    """What ``pace`` decided: turns in the candidates' order, and waits."""

    turns: tuple[Turn, ...] = ()
    waits: tuple[Wait, ...] = ()


def digest_lease(key: str, index: int) -> str:
    """The name of slot ``index`` of a digest (``sha256:<hex>``) or, unpinned, a reference."""
    algorithm, _, value = key.partition(":")
    if algorithm == "sha256" and re.fullmatch(r"[a-f0-9]{64}", value):
        return f"{LEASE_PREFIX}-{value}-{index}"
    return f"{LEASE_PREFIX}-ref-{_hash(key)}-{index}"


def registry_lease(registry: str, index: int) -> str:
    """The name of slot ``index`` of a registry host: readable, made unique by a hash."""
    readable = _NOT_NAME.sub("-", registry.lower()).strip("-")[:60]
    return f"{LEASE_PREFIX}-registry-{readable}-{_hash(registry)[:10]}-{index}"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def pace(
    candidates: Sequence[Candidate],
    *,
    leases: Mapping[str, LeaseRecord],
    warm: frozenset[str],
    policy: PacingPolicy,
    node: str,
    now: float,
    waiting_since: Mapping[str, float],
    busy: frozenset[str] = frozenset(),
) -> Pacing:
    """Decide turns and waits for ``candidates`` (priority order); see the module docstring.

    ``warm`` holds the keys some other node holds warm; ``waiting_since`` when each reference
    started waiting here (same clock as ``now`` and the leases' ``seen_at``); ``busy`` the slots this
    node holds for its pulls under way, which its other pulls may not share.
    """
    if not policy.enabled:
        return Pacing(turns=tuple(Turn(c.ref) for c in candidates))
    taken = set(busy)  # slots of pulls under way here, and given to earlier candidates

    def free(name: str) -> bool:
        record = leases.get(name)
        own = policy.lease_duration_seconds
        mine_or_dead = record is None or record.holder == node or not record.live(now, own)
        return name not in taken and mine_or_dead

    turns: list[Turn] = []
    waits: list[Wait] = []
    for candidate in candidates:
        since = waiting_since.get(candidate.ref)
        if since is not None and now - since >= policy.max_wait_seconds:
            turns.append(Turn(candidate.ref, overdue=True))
            continue
        count = policy.max_concurrent_pulls if candidate.key in warm else policy.seed_pulls
        slots = [digest_lease(candidate.key, i) for i in range(count)]
        slot = next((s for s in slots if free(s)), None)
        if slot is None:
            reason = WaitReason.FLEET if candidate.key in warm else WaitReason.SEED
            waits.append(Wait(candidate.ref, reason, _message(reason, count, policy, now - (since or now))))
            continue
        chosen: tuple[str, ...] = (slot,)
        if policy.max_concurrent_pulls_per_registry > 0:
            cap = policy.max_concurrent_pulls_per_registry
            shared = next((s for i in range(cap) if free(s := registry_lease(candidate.registry, i))), None)
            if shared is None:
                message = _message(WaitReason.REGISTRY, cap, policy, now - (since or now), candidate.registry)
                waits.append(Wait(candidate.ref, WaitReason.REGISTRY, message))
                continue
            chosen += (shared,)
        taken.update(chosen)
        turns.append(Turn(candidate.ref, chosen))
    return Pacing(tuple(turns), tuple(waits))


def _message(reason: WaitReason, count: int, policy: PacingPolicy, waited: float, registry: str = "") -> str:
    left = max(policy.max_wait_seconds - waited, 0.0)
    deadline = f"; pulls anyway in {left:.0f}s (fleet.maxWaitSeconds)"
    if reason is WaitReason.SEED:
        head = f"no node holds it warm yet and {count} node(s) pull it from the origin (fleet.seedPulls)"
    elif reason is WaitReason.FLEET:
        head = f"{count} node(s) pull it already (fleet.maxConcurrentPulls)"
    else:
        head = f"{count} pull(s) from {registry} under way in the fleet (fleet.maxConcurrentPullsPerRegistry)"
    return "waiting for a turn: " + head + deadline
