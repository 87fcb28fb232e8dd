"""The agent's ledger: which images it pulled, which models back off, and when that is written down.

The reconcile loop decides; the ledger records the outcome in the ``AgentState`` (the images the
agent may later evict, and each failing model's back-off), reports it (metrics, log line, Event)
and writes the state file only when something changed: once per pass or batch of finished pulls,
never once per model. Evictions go through here too, because removing an image and forgetting
that the agent owned it must happen together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from prefetcher.agent.executor import PullOutcome
from prefetcher.core.backoff import BackoffPolicy
from prefetcher.core.model import DesiredModel, Eviction, ManagedImage
from prefetcher.core.state import AgentState, BackoffEntry
from prefetcher.core.units import format_bytes
from prefetcher.errors import PullFailure
from prefetcher.metrics import Metrics
from prefetcher.ports import Clock, EventSink, ImageRuntime

log = logging.getLogger(__name__)
# A held image's last-desired time is refreshed at most this often: not a state write per pass.
_DESIRED_REFRESH_SECONDS = 60


class Ledger:
    """The agent's state, changed by pull outcomes and evictions, saved when it changed."""

    def __init__(
        self,
        *,
        state: AgentState,
        save: Callable[[AgentState], None],
        runtime: ImageRuntime,
        events: EventSink,
        metrics: Metrics,
        clock: Clock,
        draw: Callable[[], float],
    ) -> None:
        self._state = state
        self._save = save
        self._runtime = runtime
        self._events = events
        self._metrics = metrics
        self._clock = clock
        self._draw = draw
        self._dirty = False

    @property
    def managed(self) -> Mapping[str, ManagedImage]:
        """The images the agent pulled, by reference."""
        return self._state.managed

    def backoff_until(self) -> dict[str, float]:
        """When each failing model may be tried again."""
        return {ref: b.until for ref, b in self._state.backoff.items()}

    def managed_bytes(self) -> int:
        """Estimated disk held by the images the agent pulled."""
        return sum(m.cost_bytes for m in self._state.managed.values())

    def succeeded(self, outcome: PullOutcome) -> None:
        """Own the pulled image (as the runtime reported it) and clear the model's back-off."""
        now, ref, cost = self._clock.now(), outcome.model_ref, outcome.cost_bytes
        size = outcome.image_size_bytes
        self._state.managed[ref] = ManagedImage(ref, outcome.image_id, now, now, cost, size)
        self._state.backoff.pop(ref, None)
        self._dirty = True
        self._metrics.pulls.labels("success", "").inc()
        self._metrics.pull_duration.observe(outcome.seconds)
        self._metrics.pulled_bytes.inc(cost)
        message = f"prefetched {ref} on this node in {outcome.seconds:.1f}s ({format_bytes(cost)} on disk)"
        log.info("pull succeeded: %s", message)
        self._events.emit(outcome.sources, warning=False, reason="Prefetched", message=message)

    def failed(
        self, ref: str, error: str, sources: tuple[str, ...], *, policy: BackoffPolicy, reason: PullFailure
    ) -> None:
        """Back the model off (one more failure under ``policy``) and report the failure."""
        previous = self._state.backoff.get(ref)
        failures = (previous.failures if previous else 0) + 1
        until = self._clock.now() + policy.delay(failures, draw=self._draw())
        self._state.backoff[ref] = BackoffEntry(failures, until, error[:500])
        self._dirty = True
        self._metrics.pulls.labels("failed", reason).inc()
        log.error("pull failed: %s (%s, attempt %d): %s", ref, reason, failures, error)
        self._events.emit(sources, warning=True, reason="PrefetchFailed", message=f"{ref}: {error}")

    def remember(self, desired: tuple[DesiredModel, ...], cached_refs: frozenset[str], now: float) -> None:
        """Refresh last-desired times of held images; forget images the runtime no longer has."""
        wanted = {m.ref.canonical() for m in desired}
        for ref, managed in list(self._state.managed.items()):
            if ref not in cached_refs:
                del self._state.managed[ref]
                log.info("forgetting %s: no longer in the image store", ref)
                self._dirty = True
            elif ref in wanted and now - managed.last_desired_at > _DESIRED_REFRESH_SECONDS:
                self._state.managed[ref] = replace(managed, last_desired_at=now)
                self._dirty = True

    def evict(self, eviction: Eviction) -> None:
        """Remove the image unless a container started on it since the plan, and disown it."""
        in_use = self._runtime.images_in_use()
        if eviction.image_id in in_use or set(eviction.refs) & in_use:
            log.info("not evicting %s: in use since planning", ", ".join(eviction.refs))
            return
        self._runtime.remove_image(eviction.image_id)
        for ref in eviction.refs:
            self._state.managed.pop(ref, None)
        self._dirty = True
        self._metrics.evictions.labels(eviction.reason.value).inc()
        log.info(
            "evicted %s (%s, freed about %s)",
            ", ".join(eviction.refs),
            eviction.reason.value,
            format_bytes(eviction.freed_bytes),
        )

    def flush(self) -> None:
        """Write the state if it changed since the last write (raises StateError)."""
        if self._dirty:
            self._save(self._state)
            self._dirty = False
