"""JSON log lines carry the field names other Kubernetes components use."""

from __future__ import annotations

import json
import logging
import sys

from prefetcher.agent.runtime_support import JsonFormatter


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "prefetcher.agent", "levelno": logging.WARNING})
    made.levelname, made.msg, made.args = "WARNING", message, args
    made.created = 1700000000.25
    made.__dict__.update(extra)
    return made


def test_a_line_has_ts_level_logger_msg_and_the_structured_fields() -> None:
    line = JsonFormatter().format(record("skipped %s (%s)", "m@sha256:1", "budget", node="gpu-1", bytes=5))
    assert json.loads(line) == {
        "ts": 1700000000.25,
        "level": "warning",
        "logger": "prefetcher.agent",
        "msg": "skipped m@sha256:1 (budget)",
        "node": "gpu-1",
        "bytes": 5,
    }


def test_an_exception_goes_under_err_and_the_line_stays_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    line = JsonFormatter().format(made)
    assert "\n" not in line
    assert "ValueError: bad" in json.loads(line)["err"]
