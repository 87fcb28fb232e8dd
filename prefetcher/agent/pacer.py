"""Fleet pull pacing around the reconcile loop: decide turns, take, renew and release slot Leases.

``decide`` reads the slot Leases and the other nodes' warm digests, asks the pure
``core.pacing.pace`` and turns waits into ``paced`` skips of the plan (read only: the ``plan``
command uses it too). ``take`` holds a turn's Leases just before a pull starts, and loses to a node
that was first. While a pull makes progress (the image filesystem grows) its Leases are renewed
every third of their duration; a stalled pull stops renewing, so its Leases expire and another node
proceeds, as they do when the agent dies. A failed pull releases its Leases at once; a successful
one after this node has published the digest as warm, so the next node sees the more generous cap
rather than a free seed slot. Lease or node calls that fail make pacing fail open: the pull goes
ahead as it would without pacing, counted in ``prefetcher_pacing_errors_total``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from prefetcher.config import FleetConfig
from prefetcher.core.model import DesiredModel, Plan, Pull, Skip, SkipReason
from prefetcher.core.pacing import (
    LEASE_PREFIX,
    Candidate,
    LeaseRecord,
    PacingPolicy,
    Turn,
    Wait,
    WaitReason,
    pace,
)
from prefetcher.errors import KubeError
from prefetcher.metrics import Metrics
from prefetcher.ports import Clock, EventSink, FleetWarmth, LeaseState, SlotLeases

log = logging.getLogger(__name__)


def model_key(model: DesiredModel) -> str:
    """What slots of a model are named after: its digest, else its reference."""
    return model.ref.digest or model.ref.canonical()


class Pacer:
    """This node's side of fleet pacing; see the module docstring."""

    def __init__(
        self,
        *,
        leases: SlotLeases,
        warmth: FleetWarmth,
        node: str,
        clock: Clock,
        events: EventSink,
        metrics: Metrics,
        policy: Callable[[], PacingPolicy],
    ) -> None:
        self._leases, self._warmth, self._node = leases, warmth, node
        self._clock, self._events, self._metrics, self._policy = clock, events, metrics, policy
        self._seen: dict[str, tuple[str, float]] = {}  # lease name -> (version, first seen, monotonic)
        self._states: dict[str, LeaseState] = {}
        self._waiting_since: dict[str, float] = {}
        self._turns: dict[str, Turn] = {}
        self._waits: dict[str, Wait] = {}  # this pass's waits: decided, then turns lost to another node
        self._lost: dict[str, Wait] = {}  # turns another node took first during this pass
        self._warm: frozenset[str] = frozenset()
        self._held: dict[str, dict[str, str]] = {}  # ref -> {lease name: version}
        self._renewed: dict[str, float] = {}
        self._finished: set[str] = set()
        self._announced: dict[str, WaitReason] = {}
        self.waiting: Counter[str] = Counter()

    def decide(self, plan: Plan) -> Plan:
        """``plan`` with the pulls that must wait for a turn moved to ``paced`` skips."""
        policy = self._policy()
        self._turns, self._waits, self._lost = {}, {}, {}
        if not policy.enabled or not plan.pulls:
            self._waiting_since.clear()
            return self._count(plan)
        now = self._clock.monotonic()
        try:
            self._states, self._warm = self._leases.list(), self._warmth.elsewhere()
        except KubeError as err:
            self._failed("read", err)
            return self._count(plan)
        by_ref = {p.model.ref.canonical(): p for p in plan.pulls}
        candidates = [Candidate(ref, model_key(p.model), p.model.ref.registry) for ref, p in by_ref.items()]
        records = self._observe(now)
        busy = frozenset(name for held in self._held.values() for name in held)
        result = pace(
            candidates,
            leases=records,
            warm=self._warm,
            policy=policy,
            node=self._node,
            now=now,
            waiting_since=self._waiting_since,
            busy=busy,
        )
        self._turns = {t.ref: t for t in result.turns}
        self._sweep(records, now, keep=busy | {name for t in result.turns for name in t.leases})
        waits = {w.ref: w for w in result.waits}
        since = self._waiting_since
        self._waiting_since = {r: since.get(r, now) for r in by_ref if r in waits or r in since}
        self._announced = {r: reason for r, reason in self._announced.items() if r in waits}
        return self._wait(plan, waits)

    def take(self, pull: Pull) -> bool:
        """Hold the Leases of ``pull``'s turn; False when another node took one first."""
        ref = pull.model.ref.canonical()
        turn = self._turns.pop(ref, None)
        if turn is None:
            return True
        if turn.overdue:
            waited = self._clock.monotonic() - self._waiting_since.pop(ref, self._clock.monotonic())
            message = f"{ref}: no turn after {waited:.0f}s (fleet.maxWaitSeconds); pulling anyway"
            log.warning("pacing deadline passed: %s", message)
            self._metrics.pacing_deadline.inc()
            self._events.emit(
                pull.model.sources, warning=True, reason="PacingDeadlinePassed", message=message
            )
            return True
        held: dict[str, str] = {}
        try:
            for name in turn.leases:
                known = self._states.get(name)
                version = self._leases.take(
                    name,
                    holder=self._node,
                    duration_seconds=self._duration(),
                    version=known.version if known else None,
                )
                if version is None:
                    self._lost[ref] = self._lost_race(pull, name)
                    self._release(held)
                    return False
                held[name] = version
        except KubeError as err:
            self._failed("take", err)
            self._release(held)
            return True
        self._held[ref], self._renewed[ref] = held, self._clock.monotonic()
        self._waiting_since.pop(ref, None)
        return True

    def lost_turns(self, plan: Plan) -> Plan:
        """``plan`` with the pulls whose turn another node took first (``take`` said False) as waits.

        Their wait is reported like any other (``paced`` skip, summary, metric), and the loop looks
        again within ``fleet.pollSeconds`` rather than after a whole resync period.
        """
        if not self._lost:
            return plan
        now = self._clock.monotonic()
        for ref in self._lost:
            self._waiting_since.setdefault(ref, now)
        return self._wait(plan, self._lost)

    def _wait(self, plan: Plan, waits: Mapping[str, Wait]) -> Plan:
        """``plan`` with the pulls of ``waits`` moved to ``paced`` skips, each wait logged when it
        starts or its reason changes (not every look) and counted with this pass's others."""
        for ref, wait in waits.items():
            if self._announced.get(ref) is not wait.reason:
                log.info("waiting for a turn to pull %s (%s): %s", ref, wait.reason.value, wait.message)
                self._announced[ref] = wait.reason
        self._waits.update(waits)
        by_ref = {p.model.ref.canonical(): p for p in plan.pulls}
        skips = tuple(Skip(r, SkipReason.PACED, w.message, by_ref[r].model.sources) for r, w in waits.items())
        pulls = tuple(p for p in plan.pulls if p.model.ref.canonical() not in waits)
        return self._count(replace(plan, pulls=pulls, skips=plan.skips + skips))

    def _lost_race(self, pull: Pull, lease: str) -> Wait:
        ref = pull.model.ref.canonical()
        if lease.startswith(f"{LEASE_PREFIX}-registry-"):
            reason = WaitReason.REGISTRY
        else:
            reason = WaitReason.FLEET if model_key(pull.model) in self._warm else WaitReason.SEED
        return Wait(ref, reason, f"another node took the turn first ({lease}); looking again")

    def renew(self, progress: Mapping[str, float]) -> None:
        """Renew the Leases of pulls that made progress (monotonic time of the last, by reference)."""
        now, duration = self._clock.monotonic(), self._duration()
        for ref, held in list(self._held.items()):
            if now - self._renewed.get(ref, 0.0) < duration / 3:
                continue
            if ref not in self._finished and now - progress.get(ref, float("-inf")) >= duration:
                continue  # stalled or gone: let the Leases expire so another node proceeds
            try:
                for name, version in list(held.items()):
                    renewed = self._leases.take(
                        name, holder=self._node, duration_seconds=duration, version=version
                    )
                    if renewed is None:
                        log.warning("lease %s of %s was taken over by another node", name, ref)
                        del held[name]
                    else:
                        held[name] = renewed
            except KubeError as err:
                self._failed("renew", err)
            self._renewed[ref] = now

    def finished(self, ref: str, *, succeeded: bool) -> None:
        """A pull ended: release its Leases now, or after ``settle`` published it as warm."""
        if succeeded:
            self._finished.add(ref)
        else:
            self._drop(ref)

    def settle(self, warm: Iterable[DesiredModel]) -> None:
        """After a pass: publish the digests warm here, then release the Leases of finished pulls."""
        if not self._policy().enabled:
            self.close()  # pacing turned off by a reload: hold nothing
            return
        try:
            self._warmth.publish(model_key(m) for m in warm)
        except KubeError as err:
            self._failed("publish", err)
            return
        for ref in self._finished:
            self._drop(ref)
        self._finished.clear()

    def close(self) -> None:
        """Release every Lease held: the agent stops and abandons its pulls."""
        for ref in list(self._held):
            self._drop(ref)
        self._finished.clear()

    def summary(self) -> dict[str, object] | None:
        """Models waiting for a turn by reason, and turns held, for the node summary; None when off."""
        if not self._policy().enabled:
            return None
        return {"waiting": dict(self.waiting), "holding": len(self._held)}

    def _observe(self, now: float) -> dict[str, LeaseRecord]:
        """Lease records whose ``seen_at`` is when this node first saw each version."""
        seen = {}
        for name, state in self._states.items():
            version, first = self._seen.get(name, (state.version, now))
            seen[name] = (state.version, first if version == state.version else now)
        self._seen = seen
        return {
            n: LeaseRecord(n, s.holder, s.version, seen[n][1], s.duration_seconds)
            for n, s in self._states.items()
        }

    def _sweep(self, records: Mapping[str, LeaseRecord], now: float, *, keep: frozenset[str]) -> None:
        """Delete slots whose holder stopped renewing (dead agents, abandoned turns), except ``keep``
        (this node's own, and those this pass is about to take over): an expired slot is free either
        way, so this changes no decision, but slots of models no node wants any more would otherwise
        stay for ever. The delete carries the read version: a slot renewed or taken over meanwhile is
        left alone."""
        own = self._duration()
        for name, record in records.items():
            if name in keep or not record.holder or record.live(now, own):
                continue
            try:
                self._leases.release(name, version=record.version)
            except KubeError as err:
                self._failed("release", err)
                return
            log.info("deleted the expired pacing slot %s of %s", name, record.holder)

    def _drop(self, ref: str) -> None:
        """Release the Leases of ``ref``'s pull and forget them."""
        self._renewed.pop(ref, None)
        self._release(self._held.pop(ref, {}))

    def _release(self, held: Mapping[str, str]) -> None:
        for name, version in held.items():
            try:
                self._leases.release(name, version=version)
            except KubeError as err:  # it expires on its own
                self._failed("release", err)

    def _count(self, plan: Plan) -> Plan:
        self.waiting = Counter(w.reason.value for w in self._waits.values())
        for reason in WaitReason:
            self._metrics.pacing_waiting.labels(reason.value).set(self.waiting[reason.value])
        return plan

    def _duration(self) -> float:
        return self._policy().lease_duration_seconds

    def _failed(self, operation: str, err: KubeError) -> None:
        self._metrics.pacing_errors.labels(operation).inc()
        log.warning("fleet pacing: %s failed, pulls go ahead unpaced: %s", operation, err)


def pacing_policy(fleet: FleetConfig) -> PacingPolicy:
    """The ``fleet`` section as the pacing core reads it."""
    return PacingPolicy(
        enabled=fleet.pacing,
        seed_pulls=fleet.seed_pulls,
        max_concurrent_pulls=fleet.max_concurrent_pulls,
        max_concurrent_pulls_per_registry=fleet.max_concurrent_pulls_per_registry,
        lease_duration_seconds=fleet.lease_duration_seconds,
        max_wait_seconds=fleet.max_wait_seconds,
    )
