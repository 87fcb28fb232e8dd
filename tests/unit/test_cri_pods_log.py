"""The CRI container log format the pod helper reads (``<time> <stream> <P|F> <content>``)."""

from __future__ import annotations

import pytest

from tests.support.pods import parse_cri_log


@pytest.mark.parametrize(
    ("text", "output"),
    [
        ("", ""),
        ('2026-01-01T00:00:00.000000001Z stdout F {"model": 1}\n', '{"model": 1}\n'),
        ("2026-01-01T00:00:00Z stdout P hel\n2026-01-01T00:00:00Z stdout F lo\n", "hello\n"),
        (
            "2026-01-01T00:00:00Z stderr F cat: can't open: Permission denied\n",
            "cat: can't open: Permission denied\n",
        ),
        ("2026-01-01T00:00:00Z stdout F \n", "\n"),
        ("2026-01-01T00:00:00Z stdout F two  spaces\n", "two  spaces\n"),
    ],
)
def test_parse_cri_log(text: str, output: str) -> None:
    assert parse_cri_log(text) == output
