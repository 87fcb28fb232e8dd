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


# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the field names Kubernetes components log under.

    ``ts`` (seconds since the epoch, as klog's and controller-runtime's JSON output), ``level``,
    ``logger``, ``msg``, then any structured fields passed with ``extra=``, and ``err`` for an
    exception's text.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        doc: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["err"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


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
