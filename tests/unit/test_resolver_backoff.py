"""The resolver asks the registry about a reference only once its back-off is over."""

from __future__ import annotations

from prefetcher.agent.resolver import Resolver
from prefetcher.core.model import ModelRequest, SkipReason
from prefetcher.core.refs import parse_reference
from prefetcher.ports import ResolvedImage
from prefetcher.testing.fakes import FakeClock, FakeEvents, FakeRegistry
from tests.support.planner_inputs import digest

REF = f"registry.test:5000/models/a@{digest('a')}"


def resolve(backoff_until: dict[str, float], clock: FakeClock) -> tuple[FakeRegistry, list[SkipReason]]:
    registry = FakeRegistry({REF: ResolvedImage(parse_reference(REF), 7)})
    resolver = Resolver(registry=registry, events=FakeEvents(), clock=clock.now)
    result = resolver.resolve_all(
        [ModelRequest(f"oci://{REF}", 0, "isvc ns/a")],
        cached_refs=frozenset(),
        tag_policy="resolve",
        backoff_until=backoff_until,
    )
    return registry, [skip.reason for skip in result.skips]


def test_a_reference_backing_off_is_skipped_without_a_lookup() -> None:
    clock = FakeClock()
    registry, reasons = resolve({REF: clock.now() + 60}, clock)
    assert registry.lookups == [] and reasons == [SkipReason.BACKOFF]


def test_a_reference_whose_back_off_is_over_is_looked_up() -> None:
    clock = FakeClock()
    registry, reasons = resolve({REF: clock.now()}, clock)
    assert registry.lookups == [REF] and reasons == []
