"""What the reconcile loop tells the rest of the agent about itself, and the hook it calls after a pass.

The loop's thread is the only writer; the health server's threads, the after-pass hook and the
command that started the loop read. So the loop's bookkeeping (passes, health, last error, the last
pass's report, pulls under way, bytes held) is one frozen ``AgentStatus`` value, swapped under a
lock by ``StatusBoard``: a reader always sees one consistent pass, never half of the next one.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Protocol

from prefetcher.core.model import Plan


@dataclass(frozen=True)
class PassReport:
    """What the last pass decided, for the CLI, health and the start-up taint."""

    plan: Plan = Plan()
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentStatus:
    """The loop's bookkeeping at one moment."""

    passes: int = 0
    """Passes that completed."""
    healthy: bool = False
    """True when the last pass completed (the runtime answered)."""
    last_error: str = ""
    """The last failure of a pass or of a model, shortened to 300 characters."""
    report: PassReport = PassReport()
    """The last pass's plan and the models that failed in this run."""
    pulling: int = 0
    """Pulls under way."""
    managed_bytes: int = 0
    """Bytes on disk of the images the agent pulled and still holds."""

    def summary(self, *, restart_pending: tuple[str, ...] = ()) -> dict[str, object]:
        """What an operator wants at a glance: warm models and bytes, budget, pulls, skips, last error."""
        plan = self.report.plan
        return {
            "warm": len(plan.warm),
            "managedBytes": self.managed_bytes,
            "pulling": self.pulling,
            "skipped": dict(skip_counts(plan)),
            "budgetBytes": plan.limit_bytes,
            "usedBytes": plan.used_bytes,
            "lastError": self.last_error,
            "restartPending": list(restart_pending),
        }


class StatusBoard:
    """The current ``AgentStatus``: written by the loop, read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = AgentStatus()

    def read(self) -> AgentStatus:
        """The status now (a frozen value: safe to keep and to read field by field)."""
        with self._lock:
            return self._status

    def passed(self, report: PassReport, *, pulling: int, managed_bytes: int) -> None:
        """A pass completed with ``report``."""
        with self._lock:
            now = replace(self._status, passes=self._status.passes + 1, healthy=True, report=report)
            self._status = replace(now, pulling=pulling, managed_bytes=managed_bytes)

    def failed(self, error: str, *, pulling: int, managed_bytes: int) -> None:
        """A pass failed with ``error`` (the runtime did not answer, the state was not written…)."""
        with self._lock:
            now = replace(self._status, healthy=False, last_error=error[:300])
            self._status = replace(now, pulling=pulling, managed_bytes=managed_bytes)

    def error(self, message: str) -> None:
        """A model failed; the loop carries on."""
        with self._lock:
            self._status = replace(self._status, last_error=message[:300])

    def progress(self, *, pulling: int, managed_bytes: int) -> None:
        """Pulls finished between passes."""
        with self._lock:
            self._status = replace(self._status, pulling=pulling, managed_bytes=managed_bytes)

    def report(self, report: PassReport) -> None:
        """Replace the last report (a one-shot run adds the failure that ended it)."""
        with self._lock:
            self._status = replace(self._status, report=report)


class AfterPass(Protocol):
    """Called by the loop after every pass, failed ones included (the node's taint, summary, condition).

    ``settled``: nothing is being pulled or waits to be; ``passed``: the pass completed.
    Raising ``PrefetchError`` is logged by the loop and changes nothing else.
    """

    def __call__(self, *, settled: bool, passed: bool, summary: dict[str, object]) -> None:
        """React to the pass that just ended."""


def skip_counts(plan: Plan) -> Counter[str]:
    """Skipped models of ``plan`` by reason."""
    return Counter(skip.reason.value for skip in plan.skips)
