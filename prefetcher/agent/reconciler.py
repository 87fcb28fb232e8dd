"""The reconcile loop: resolve, plan, evict, pull, watch pulls, re-plan after every change.

One thread drives everything: CRI pulls are asynchronous calls, so "bounded concurrency" is the
number of pull handles this loop keeps open. A pass runs every ``resyncSeconds``, at once after a
pull finishes, and at once when ``wake`` is set (a source saw a change), so a new InferenceService
is acted on within a pass, not a resync period. A pull fails on total time (``pull.timeoutSeconds``)
or on lack of progress — the image filesystem not growing for ``pull.stallSeconds`` — because a
100 GB pull legitimately takes an hour while a wedged one never finishes. The state is written
once per pass (and once per batch of finished pulls) when it changed, never once per model.

The config is read once per pass, at its start: the pass and the wait after it act on that one
snapshot, so a reload never takes effect halfway through a pass. What other threads may read (passes,
health, the last report and error) is kept on a ``status.StatusBoard``, never on this object.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

from prefetcher.agent.executor import PullTracker
from prefetcher.agent.keychain import Keychain
from prefetcher.agent.ledger import Ledger
from prefetcher.agent.pacer import Pacer
from prefetcher.agent.resolver import Resolution, Resolver
from prefetcher.agent.status import AfterPass, AgentStatus, PassReport, StatusBoard, skip_counts
from prefetcher.config import Config
from prefetcher.core import planner
from prefetcher.core.backoff import BackoffPolicy
from prefetcher.core.model import (
    Budget,
    DiskState,
    Plan,
    Skip,
    SkipReason,
)
from prefetcher.core.state import AgentState
from prefetcher.errors import PrefetchError, PullFailure
from prefetcher.metrics import Metrics
from prefetcher.ports import Clock, DiskProbe, EventSink, ImageRuntime, ModelSource, PullSecrets, Registry

log = logging.getLogger(__name__)
# How often pulls under way are checked: a finished pull is noticed within this, so keep it short.
POLL_SECONDS = 0.25
# Transient skips (a pull under way, a retry pending) are not news; the failure itself was reported.
_QUIET = (SkipReason.IN_FLIGHT, SkipReason.BACKOFF, SkipReason.UNRESOLVED, SkipReason.PACED)


class Reconciler:
    """Keeps the node's image store in line with the desired models, within the budget."""

    def __init__(
        self,
        *,
        runtime: ImageRuntime,
        registry: Registry,
        source: ModelSource,
        disk: DiskProbe,
        events: EventSink,
        metrics: Metrics,
        clock: Clock,
        config: Callable[[], Config],
        state: AgentState,
        save_state: Callable[[AgentState], None],
        draw: Callable[[], float],
        after_pass: AfterPass | None = None,
        wake: threading.Event | None = None,
        pull_secrets: PullSecrets | None = None,
        restart_pending: Callable[[], tuple[str, ...]] = tuple,
        status: StatusBoard | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self._runtime = runtime
        self._source = source
        self._disk = disk
        self._events = events
        self._metrics = metrics
        self._clock = clock
        self._config = config
        self._ledger = Ledger(
            state=state,
            save=save_state,
            runtime=runtime,
            events=events,
            metrics=metrics,
            clock=clock,
            draw=draw,
        )
        self._restart_pending = restart_pending
        self._after_pass = after_pass
        self._wake = wake
        self._pacer = pacer
        keychain = Keychain(node=registry.credentials_for, pull_secrets=pull_secrets)
        self._resolver = Resolver(registry=registry, events=events, clock=clock.now, keychain=keychain)
        self._pulls = PullTracker(runtime=runtime, disk=disk, clock=clock, keychain=keychain)
        self._skipped: dict[str, SkipReason] = {}
        self._status = status or StatusBoard()

    def run(self, stop: threading.Event, *, once: bool = False) -> int:
        """Reconcile until ``stop`` is set; with ``once``, until nothing is left to do (exit code)."""
        try:
            return self._loop(stop, once=once)
        finally:
            if self._pacer is not None:  # turns of abandoned pulls pass on now, not at their expiry
                self._pacer.close()

    def _loop(self, stop: threading.Event, *, once: bool) -> int:
        failed: dict[str, str] = {}
        while not stop.is_set():
            if self._wake is not None:
                self._wake.clear()  # before the pass: a change seen during it wakes the next wait
            cfg = self._config()  # the one read of this pass
            error = self._pass_safely(cfg, failed if once else None)
            plan = self._status.read().report.plan
            if once and error is not None:
                self._status.report(PassReport(plan, {**failed, "runtime": error}))
                return 1
            if not once:
                self._wait(stop, cfg, _next_pass_seconds(cfg, plan), None)
            elif self._pulls.active:
                self._wait(stop, cfg, cfg.pull.timeout_seconds, failed)
            elif _paced(plan):
                self._wait(stop, cfg, _next_pass_seconds(cfg, plan), failed)
            elif not plan.pulls and not plan.evictions:
                return 1 if failed else 0
        return 0

    def status(self) -> AgentStatus:
        """The loop's bookkeeping now; safe to call from any thread."""
        return self._status.read()

    def dry_run(self) -> Plan:
        """The plan a pass would carry out now, changing nothing."""
        return self._decide(self._config(), None)[0]

    def reconcile(self, cfg: Config, failed_this_run: dict[str, str] | None = None) -> PassReport:
        """One pass on the config snapshot ``cfg``: resolve, plan, evict, start pulls.

        Raises PrefetchError when the runtime is down.
        """
        plan, resolution, cached_refs, disk = self._decide(cfg, failed_this_run)
        try:
            for ref, error, sources in resolution.failures:
                self._record_failure(cfg, ref, error, sources, failed=failed_this_run)
            self._ledger.remember(resolution.desired, cached_refs, self._clock.now())
            for eviction in plan.evictions:
                self._ledger.evict(eviction)
            free = cfg.pull.concurrency - len(self._pulls.active)
            for pull in plan.pulls:
                if free > 0 and (self._pacer is None or self._pacer.take(pull)):
                    self._pulls.start(pull, cfg)
                    free -= 1
        finally:
            self._ledger.flush()
        if self._pacer is not None:
            plan = self._pacer.lost_turns(plan)
        self._publish(plan, disk)
        return PassReport(plan, dict(failed_this_run or {}))

    def _decide(
        self, cfg: Config, failed_this_run: dict[str, str] | None
    ) -> tuple[Plan, Resolution, frozenset[str], DiskState]:
        now = self._clock.now()
        cached = self._runtime.list_images()
        cached_refs = frozenset(r for image in cached for r in image.refs)
        if failed_this_run is None:
            backoff = self._ledger.backoff_until()
        else:  # a one-shot run tries every model once, whatever an earlier run's back-off said
            backoff = dict.fromkeys(failed_this_run, float("inf"))
        resolution = self._resolver.resolve_all(
            self._source.requests(),
            cached_refs=cached_refs,
            tag_policy=cfg.pull.tag_policy,
            backoff_until=backoff,
        )
        disk = self._disk.usage()
        plan = planner.plan(
            resolution.desired,
            cached,
            self._runtime.images_in_use(),
            disk,
            _budget(cfg),
            now=now,
            managed=self._ledger.managed,
            backoff_until=backoff,
            in_flight=self._pulls.reserved(),
        )
        plan = replace(plan, skips=resolution.skips + plan.skips)
        if self._pacer is not None:
            plan = self._pacer.decide(plan)
        return plan, resolution, cached_refs, disk

    def _pass_safely(self, cfg: Config, failed: dict[str, str] | None) -> str | None:
        """Run a pass; on a PrefetchError log it once and return its message (the loop carries on)."""
        try:
            report = self.reconcile(cfg, failed)
        except PrefetchError as err:
            # The top of the loop is the one place that catches broadly: log once, carry on.
            self._metrics.reconcile_errors.labels(type(err).__name__).inc()
            log.error("reconcile pass failed: %s", err)
            self._status.failed(
                str(err), pulling=frozenset(self._pulls.active), managed_bytes=self._ledger.managed_bytes()
            )
            # A failed pass settles nothing, but deadlines and the reported last error still move on.
            self._run_after_pass(settled=False)
            return str(err)
        pulling = frozenset(self._pulls.active)
        self._status.passed(report, pulling=pulling, managed_bytes=self._ledger.managed_bytes())
        self._metrics.last_reconcile.set(self._clock.now())
        settled = not self._pulls.active and not report.plan.pulls and not _paced(report.plan)
        self._run_after_pass(settled=settled)
        if self._pacer is not None:
            self._pacer.settle(report.plan.warm)
        return None

    def _run_after_pass(self, *, settled: bool) -> None:
        if self._after_pass is None:
            return
        status = self._status.read()
        try:
            self._after_pass(settled=settled, passed=status.healthy, summary=self.summary())
        except PrefetchError as err:
            log.error("after-pass hook failed: %s", err)

    def summary(self) -> dict[str, object]:
        """What an operator wants at a glance: warm models and bytes, budget, pulls, skips, last error."""
        summary = self._status.read().summary(restart_pending=self._restart_pending())
        pacing = None if self._pacer is None else self._pacer.summary()
        return summary if pacing is None else summary | {"pacing": pacing}

    def _wait(
        self, stop: threading.Event, cfg: Config, seconds: float, failed: dict[str, str] | None
    ) -> None:
        """Watch pulls until one finishes or a source wakes the loop (re-plan at once), or ``seconds`` pass.

        With ``wake``, the loop sleeps on it instead of ``stop``: whoever sets ``stop`` sets ``wake``
        too (the CLI's signal handler), else a stop is noticed at the next poll, within 5 s.
        """
        deadline = self._clock.monotonic() + seconds
        limit = self._status.read().report.plan.limit_bytes or None  # of the last pass; 0 before the first
        while not stop.is_set() and self._clock.monotonic() < deadline:
            finished = self._pulls.poll(stall_seconds=cfg.pull.stall_seconds, limit_bytes=limit)
            if self._pacer is not None:
                self._pacer.renew({ref: f.last_progress for ref, f in self._pulls.active.items()})
            for outcome in finished:
                if self._pacer is not None:
                    self._pacer.finished(outcome.model_ref, succeeded=outcome.error is None)
                if outcome.error is None:
                    self._ledger.succeeded(outcome)
                else:
                    ref, error, sources = outcome.model_ref, outcome.error, outcome.sources
                    self._record_failure(cfg, ref, error, sources, failed=failed, reason=outcome.reason)
            if finished:
                self._status.progress(
                    pulling=frozenset(self._pulls.active), managed_bytes=self._ledger.managed_bytes()
                )
            try:
                self._ledger.flush()
            except PrefetchError as err:  # kept dirty: the next pass writes it or fails loudly
                log.error("saving the state failed: %s", err)
            if finished or (self._wake is not None and self._wake.is_set()):
                return
            (stop if self._wake is None else self._wake).wait(
                POLL_SECONDS if self._pulls.active else min(5.0, seconds)
            )

    def _record_failure(
        self,
        cfg: Config,
        ref: str,
        error: str,
        sources: tuple[str, ...],
        *,
        failed: dict[str, str] | None,
        reason: PullFailure = PullFailure.UNRESOLVED,
    ) -> None:
        policy = BackoffPolicy(cfg.pull.backoff_base_seconds, cfg.pull.backoff_max_seconds)
        if failed is not None:
            failed[ref] = error
        self._status.error(f"{ref}: {error}")
        self._ledger.failed(ref, error, sources, policy=policy, reason=reason)

    def _publish(self, plan: Plan, disk: DiskState) -> None:
        m = self._metrics
        m.budget_bytes.set(plan.limit_bytes)
        m.fs_usage_ratio.set(disk.usage_ratio)
        m.fs_used_bytes.set(disk.used_bytes)
        m.fs_capacity_bytes.set(disk.total_bytes)
        m.managed_bytes.set(self._ledger.managed_bytes())
        m.models.labels("warm").set(len(plan.warm))
        m.models.labels("pulling").set(len(self._pulls.active))
        m.models.labels("pending").set(max(len(plan.pulls) - len(self._pulls.active), 0))
        m.models.labels("skipped").set(len(plan.skips))
        counts = skip_counts(plan)
        for reason in SkipReason:
            m.skipped.labels(reason.value).set(counts[reason.value])
        self._announce_skips(plan.skips)

    def _announce_skips(self, skips: tuple[Skip, ...]) -> None:
        """Log and report a skip when it first happens or its reason changes, not on every pass."""
        current = {s.ref: s.reason for s in skips if s.reason not in _QUIET}
        for skip in skips:
            if skip.reason in _QUIET or self._skipped.get(skip.ref) is skip.reason:
                continue
            log.warning("skipped %s (%s): %s", skip.ref, skip.reason.value, skip.message)
            self._events.emit(
                skip.sources, warning=True, reason="PrefetchSkipped", message=f"{skip.ref}: {skip.message}"
            )
        self._skipped = current


def _paced(plan: Plan) -> bool:
    """True when a model of ``plan`` waits for its turn among the fleet's nodes."""
    return any(s.reason is SkipReason.PACED for s in plan.skips)


def _next_pass_seconds(cfg: Config, plan: Plan) -> float:
    """The resync period, or sooner while a model waits for a turn."""
    return min(cfg.resync_seconds, cfg.fleet.poll_seconds) if _paced(plan) else cfg.resync_seconds


def _budget(cfg: Config) -> Budget:
    return Budget(
        cfg.budget.max_usage_percent,
        cfg.budget.unpack_factor,
        cfg.eviction.enabled,
        cfg.eviction.grace_seconds,
    )
