"""Pulls under way: started through the runtime port, watched for completion and for stalls.

A finished pull's disk cost is the image filesystem's growth while it ran, when that growth can be
trusted: the pull ran alone and started from nothing. After an interrupted attempt (a runtime
restart, a stall, a cancel) blobs fetched before are already on disk and the growth undercounts;
then, as when pulls overlapped, the cost is the runtime's own size of the image times the unpack
factor, never less than the growth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prefetcher.agent.keychain import Keychain, Keys
from prefetcher.config import Config
from prefetcher.core.model import Pull
from prefetcher.core.units import format_bytes
from prefetcher.errors import PullFailedError, PullFailure, RuntimeUnavailableError
from prefetcher.ports import Clock, DiskProbe, ImageRuntime, PullHandle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullOutcome:
    """A finished pull: ``error`` is None on success, else ``reason`` labels the failure."""

    model_ref: str
    sources: tuple[str, ...]
    image_id: str
    cost_bytes: int
    seconds: float
    error: str | None = None
    reason: PullFailure = PullFailure.ERROR
    image_size_bytes: int = 0


@dataclass
class _InFlight:
    pull: Pull
    handle: PullHandle
    started: float
    last_progress: float
    used_at_start: int
    alone: bool
    keys: Keys
    unpack_factor: float


class PullTracker:
    """Open pull handles, keyed by canonical reference."""

    def __init__(self, *, runtime: ImageRuntime, disk: DiskProbe, clock: Clock, keychain: Keychain) -> None:
        self._runtime = runtime
        self._disk = disk
        self._clock = clock
        self._keychain = keychain
        self._active: dict[str, _InFlight] = {}
        self._last_used = 0
        self._interrupted: set[str] = set()  # failed here before: their content may be partly on disk

    @property
    def active(self) -> dict[str, _InFlight]:
        """Pulls under way."""
        return self._active

    def reserved(self) -> dict[str, int]:
        """Estimated disk cost of each pull under way, for the planner."""
        return {ref: f.pull.cost_bytes for ref, f in self._active.items()}

    def start(self, pull: Pull, cfg: Config) -> None:
        """Begin a pull; raises RuntimeUnavailableError when the runtime cannot be reached."""
        ref = pull.model.ref.canonical()
        keys = self._keychain.keys(pull.model.ref, pull.model.sources)
        # Measure before starting: a small pull may be done before start_pull returns.
        used = self._disk.usage().used_bytes
        handle = self._runtime.start_pull(
            ref, credentials=keys.credentials, timeout_seconds=cfg.pull.timeout_seconds
        )
        now = self._clock.monotonic()
        self._last_used = max(self._last_used, used)
        for other in self._active.values():
            other.alone = False
        self._active[ref] = _InFlight(
            pull,
            handle,
            now,
            now,
            used,
            alone=not self._active,
            keys=keys,
            unpack_factor=cfg.budget.unpack_factor,
        )
        log.info(
            "pulling %s (priority %d, about %s on disk) for %s",
            ref,
            pull.model.priority,
            format_bytes(pull.cost_bytes),
            ", ".join(pull.model.sources) or "-",
        )

    def poll(self, *, stall_seconds: float, limit_bytes: int | None = None) -> list[PullOutcome]:
        """Collect finished pulls; cancel stalled ones, and ones that outgrow their declared size
        past ``limit_bytes`` (a manifest that understates its layers must not breach the budget)."""
        if not self._active:
            return []
        now = self._clock.monotonic()
        used = self._disk.usage().used_bytes
        if used > self._last_used:
            for flight in self._active.values():
                flight.last_progress = now
        self._last_used = used
        over_budget = limit_bytes is not None and used > limit_bytes
        outcomes = []
        for ref, flight in list(self._active.items()):
            if flight.handle.done():
                outcomes.append(self._finish(ref, flight, used, now))
            elif now - flight.last_progress > stall_seconds:
                flight.handle.cancel()
                error = f"no progress on the image filesystem for {stall_seconds:.0f}s; pull cancelled"
                outcomes.append(self._outcome(flight, now, error=error, reason=PullFailure.STALLED))
            elif over_budget and used - flight.used_at_start > flight.pull.cost_bytes:
                flight.handle.cancel()
                error = _outgrown(used - flight.used_at_start, flight.pull.cost_bytes, limit_bytes or 0)
                outcomes.append(self._outcome(flight, now, error=error, reason=PullFailure.OVER_BUDGET))
            else:
                continue
            del self._active[ref]
            if outcomes[-1].error is not None:
                self._interrupted.add(ref)
        return outcomes

    def _finish(self, ref: str, flight: _InFlight, used: int, now: float) -> PullOutcome:
        try:
            flight.handle.result(0)
            # The runtime's record right after the agent's own pull: what proves ownership later.
            image = self._runtime.image_status(ref)
        except PullFailedError as err:
            return self._outcome(flight, now, error=str(err), reason=err.reason)
        except RuntimeUnavailableError as err:
            return self._outcome(flight, now, error=str(err), reason=PullFailure.RUNTIME_UNAVAILABLE)
        if image is None:
            error = f"pull of {ref} finished but the runtime does not list the image"
            return self._outcome(flight, now, error=error, reason=PullFailure.ERROR)
        observed = used - flight.used_at_start
        clean = flight.alone and ref not in self._interrupted and observed >= image.size_bytes
        estimate = int(image.size_bytes * flight.unpack_factor)
        cost = observed if clean else max(estimate, observed if flight.alone else 0)
        self._interrupted.discard(ref)
        sources, seconds = flight.pull.model.sources, now - flight.started
        return PullOutcome(ref, sources, image.id, cost, seconds, image_size_bytes=image.size_bytes)

    @staticmethod
    def _outcome(flight: _InFlight, now: float, *, error: str, reason: PullFailure) -> PullOutcome:
        model, error = flight.pull.model, flight.keys.explain(error)
        return PullOutcome(model.ref.canonical(), model.sources, "", 0, now - flight.started, error, reason)


def _outgrown(growth: int, declared: int, limit: int) -> str:
    return (
        f"the image filesystem grew by {format_bytes(growth)} during the pull, more than the "
        f"{format_bytes(declared)} its manifest declares, and passed the budget of "
        f"{format_bytes(limit)}; pull cancelled"
    )
