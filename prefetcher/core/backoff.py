"""Exponential back-off with jitter for failed pulls, and the check of whether a reference waits.

Pure: the random draw and the current time are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prefetcher.core.model import Skip, SkipReason


@dataclass(frozen=True)
class BackoffPolicy:
    """Delay after the n-th consecutive failure: base * 2**(n-1), capped, with +/- jitter."""

    base_seconds: float = 30.0
    max_seconds: float = 1800.0
    jitter_fraction: float = 0.2

    def delay(self, failures: int, *, draw: float) -> float:
        """Seconds to wait after ``failures`` consecutive failures; ``draw`` is uniform in [0, 1)."""
        if failures <= 0:
            return 0.0
        raw = min(self.base_seconds * 2.0 ** min(failures - 1, 62), self.max_seconds)
        jitter = raw * self.jitter_fraction * (2 * draw - 1)
        return max(0.0, min(raw + jitter, self.max_seconds))


def retry_note(wait: float) -> str:
    """Why a model waits after a failed lookup or pull, and when it is tried again.

    An infinite wait means the model failed earlier in a one-shot run, which does not retry it.
    """
    if math.isinf(wait):
        return "last attempt failed earlier in this run; not retried until the next run"
    return f"last attempt failed; retry in {wait:.0f}s"


def backoff_skip(
    ref: str, sources: tuple[str, ...], *, until: Mapping[str, float], now: float
) -> Skip | None:
    """The skip of ``ref`` while it backs off (``until[ref]`` still ahead of ``now``), else None.

    The one back-off check: the resolver asks it before a registry lookup, the planner before a pull.
    """
    retry_at = until.get(ref)
    if retry_at is not None and retry_at > now:
        return Skip(ref, SkipReason.BACKOFF, retry_note(retry_at - now), sources)
    return None
