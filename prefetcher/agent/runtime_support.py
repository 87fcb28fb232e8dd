"""Small real implementations of ports that need no adapter: the system clock and a log event sink."""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger("prefetcher.events")


class SystemClock:
    """Wall and monotonic time."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        return time.monotonic()


class LogEvents:
    """Events as log lines, for nodes without a cluster (the models-file source)."""

    def emit(self, sources: tuple[str, ...], *, warning: bool, reason: str, message: str) -> None:
        """Log the event once."""
        level = logging.WARNING if warning else logging.INFO
        log.log(level, "event %s for %s: %s", reason, ", ".join(sources) or "node", message)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception text)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        doc = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(*, level: str, json_format: bool) -> None:
    """Set the root logger's level and format (idempotent)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if json_format
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
