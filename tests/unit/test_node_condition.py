"""The models-warm Node condition: what each pass outcome makes it say."""

from __future__ import annotations

from typing import Any

import pytest

from prefetcher.adapters.node_condition import Condition, models_warm


def summary(warm: int = 0, pulling: int = 0, skipped: dict[str, int] | None = None) -> dict[str, Any]:
    return {"warm": warm, "pulling": pulling, "skipped": skipped or {}, "lastError": "runtime down"}


@pytest.mark.parametrize(
    ("settled", "passed", "facts", "expected"),
    [
        (True, True, summary(3), Condition("True", "ModelsWarm", "3 warm, 0 pulling, 0 skipped")),
        (True, True, summary(0), Condition("True", "ModelsWarm", "0 warm, 0 pulling, 0 skipped")),
        (
            True,
            True,
            summary(2, skipped={"budget": 1, "backoff": 2}),
            Condition("True", "ModelsWarmOrSkipped", "2 warm, 0 pulling, 3 skipped (backoff 2, budget 1)"),
        ),
        (False, True, summary(1, pulling=2), Condition("False", "Pulling", "1 warm, 2 pulling, 0 skipped")),
        (
            False,
            False,
            summary(1),
            Condition(
                "Unknown", "ReconcileFailed", "1 warm, 0 pulling, 0 skipped; last pass failed: runtime down"
            ),
        ),
    ],
)
def test_the_condition_is_true_only_once_a_pass_left_nothing_to_pull(
    settled: bool, passed: bool, facts: dict[str, Any], expected: Condition
) -> None:
    assert models_warm(settled=settled, passed=passed, summary=facts) == expected
