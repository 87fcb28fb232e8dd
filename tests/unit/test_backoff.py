"""Back-off delays (exponential, capped, jittered within bounds) and the check of who waits."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefetcher.core.backoff import BackoffPolicy, backoff_skip, retry_note
from prefetcher.core.model import Skip, SkipReason


def test_doubles_from_the_base_without_jitter() -> None:
    policy = BackoffPolicy(base_seconds=10, max_seconds=1000, jitter_fraction=0)
    assert [policy.delay(n, draw=0.3) for n in range(6)] == [0, 10, 20, 40, 80, 160]


@given(st.integers(0, 10_000), st.floats(0, 1, exclude_max=True))
def test_jitter_stays_within_fraction_and_cap(failures: int, draw: float) -> None:
    policy = BackoffPolicy(base_seconds=30, max_seconds=1800, jitter_fraction=0.2)
    delay = policy.delay(failures, draw=draw)
    if failures == 0:
        assert delay == 0
        return
    raw = min(30 * 2.0 ** min(failures - 1, 62), 1800)
    assert 0.8 * raw - 1e-9 <= delay <= min(1.2 * raw, 1800) + 1e-9


def test_retry_note_names_the_wait_or_says_a_one_shot_run_does_not_retry() -> None:
    assert retry_note(59.6) == "last attempt failed; retry in 60s"
    assert retry_note(float("inf")) == (
        "last attempt failed earlier in this run; not retried until the next run"
    )


@pytest.mark.parametrize(
    ("until", "expected"),
    [
        ({}, None),
        ({"r": 99.0}, None),
        ({"r": 100.0}, None),
        ({"r": float("nan")}, None),
        ({"other": 500.0}, None),
        ({"r": 160.0}, "last attempt failed; retry in 60s"),
        ({"r": float("inf")}, "last attempt failed earlier in this run; not retried until the next run"),
    ],
)
def test_backoff_skip_only_while_the_retry_time_is_ahead(
    until: dict[str, float], expected: str | None
) -> None:
    skip = backoff_skip("r", ("isvc ns/a",), until=until, now=100.0)
    if expected is None:
        assert skip is None
    else:
        assert skip == Skip("r", SkipReason.BACKOFF, expected, ("isvc ns/a",))
