"""The warmth reporter's rounds: Events only from the Lease holder and only when a count changed."""

from __future__ import annotations

from typing import Any

import pytest

from prefetcher.adapters.kube_api import ObjectRef
from prefetcher.adapters.warmth_report import REASON, WarmthReporter
from prefetcher.core.isvc import Component, IsvcModels
from prefetcher.core.nodefit import Constraints
from prefetcher.core.warmth import read_summary
from tests.support.polling import eventually

REF = "registry.test/models/a@sha256:" + "1" * 64


class HeldLease:
    def __init__(self) -> None:
        self.held = True

    def hold(self) -> bool:
        return self.held


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def record(self, obj: ObjectRef, *, reason: str, message: str, warning: bool = False) -> None:
        self.events.append((obj.name, reason, message))


def record(name: str) -> IsvcModels:
    return IsvcModels("ns", name, components=(Component("predictor", (f"oci://{REF}",), Constraints()),))


def reporter(
    summaries: dict[str, Any], records: list[IsvcModels]
) -> tuple[WarmthReporter, Recorded, HeldLease]:
    recorded, lease = Recorded(), HeldLease()
    built = WarmthReporter(
        lease=lease,  # type: ignore[arg-type]
        summaries=lambda: summaries,
        records=lambda: records,
        object_for=lambda source: ObjectRef("InferenceService", source.rsplit("/", 1)[-1], "ns"),
        recorder=recorded,  # type: ignore[arg-type]
        period_seconds=1.0,
    )
    return built, recorded, lease


def node(state: str, *isvcs: str) -> dict[str, Any]:
    return {"models": {REF: {"state": state, "isvcs": list(isvcs)}}}


def test_an_event_per_change_of_n_or_m_and_none_while_nothing_changes() -> None:
    summaries = {"n1": node("pulling", "ns/a"), "n2": None}
    built, recorded, _lease = reporter(summaries, [record("a"), record("nowhere")])
    assert built.report() == 2
    assert recorded.events == [
        ("a", REASON, "warm on 0 of 1 eligible nodes"),
        ("nowhere", REASON, "warm on 0 of 0 eligible nodes"),  # fits no node that reports
    ]
    assert built.report() == 0
    summaries["n1"] = node("warm", "ns/a")
    summaries["n2"] = node("pulling", "ns/a")
    assert built.report() == 1 and recorded.events[-1] == ("a", REASON, "warm on 1 of 2 eligible nodes")
    assert built.report() == 0


def test_only_the_holder_reports_and_a_regained_lease_announces_again() -> None:
    built, recorded, lease = reporter({"n1": node("warm", "ns/a")}, [record("a")])
    lease.held = False
    assert built.report() == 0 and recorded.events == []
    lease.held = True
    assert built.report() == 1
    lease.held = False
    built.report()
    lease.held = True
    assert built.report() == 1  # another agent may have announced meanwhile; it remembers nothing
    assert recorded.events == [("a", REASON, "warm on 1 of 1 eligible nodes")] * 2


def test_a_node_with_a_junk_summary_counts_nowhere_and_the_others_still_count() -> None:
    summaries = {
        "n1": node("warm", "ns/a"),
        "junk": {"models": {REF: {"state": "warm", "isvcs": 5}}},  # lying types: a crash before
        "text": read_summary("{not json"),
    }
    built, recorded, _lease = reporter(summaries, [record("a")])
    assert built.report() == 1
    assert recorded.events == [("a", REASON, "warm on 1 of 1 eligible nodes")]


def test_the_reporting_thread_outlives_an_unexpected_error(caplog: pytest.LogCaptureFixture) -> None:
    rounds = iter([RuntimeError("a bug"), {"n1": node("warm", "ns/a")}])

    def summaries() -> dict[str, Any]:
        value = next(rounds, {"n1": node("warm", "ns/a")})
        if isinstance(value, Exception):
            raise value
        return value

    built, recorded, lease = reporter({}, [record("a")])
    built._summaries = summaries
    built._period = 0.01
    lease.release = lambda: None  # type: ignore[attr-defined]
    built.start()
    try:
        eventually(lambda: recorded.events or None, what="a report after the failed round")
    finally:
        built.stop()
    assert recorded.events == [("a", REASON, "warm on 1 of 1 eligible nodes")]
    assert "warmth report failed unexpectedly" in caplog.text
