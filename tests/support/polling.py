"""Test support: ``eventually``, the one way tests wait for something to happen.

A test never sleeps a fixed time to let something happen; it polls a probe until the probe's value
is accepted or a deadline passes, then fails naming what it waited for and the last value seen
(or the last error the probe raised: a probe that raises means "not yet", except an
``AssertionError``, which fails at once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

DEFAULT_TIMEOUT_SECONDS = 30.0
POLL_INTERVAL_SECONDS = 0.05
_T = TypeVar("_T")


def _present(value: object) -> bool:
    return value is not None and value is not False


def eventually(
    probe: Callable[[], _T | None],
    *,
    what: str,
    until: Callable[[_T], bool] | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    interval_seconds: float = POLL_INTERVAL_SECONDS,
) -> _T:
    """Poll ``probe`` until ``until`` accepts its value (default: neither None nor False); return it.

    Raises ``AssertionError`` after ``timeout_seconds`` with ``what`` and the last value or error.
    """
    accept: Callable[[_T], bool] = until or _present
    deadline = time.monotonic() + timeout_seconds
    pause = threading.Event()
    last: object = None
    while True:
        try:
            value = probe()
        except AssertionError:
            raise
        except Exception as err:  # "not yet"; reported if it persists
            last = err
        else:
            last = value
            if value is not None and accept(value):
                return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_seconds}s waiting for {what}; last: {last!r}")
        pause.wait(interval_seconds)
