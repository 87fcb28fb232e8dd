"""Config edits that take effect only after a restart: noticed, logged and reported once each.

Budget, pull and eviction settings and ``resyncSeconds`` are read on every pass; everything else
(endpoints, paths, the listen address, logging, registries, Kubernetes settings) is wired at
start-up. An edit of such a key is accepted as valid but changes nothing until the agent restarts,
so it is said so, and the node summary lists the keys under ``restartPending``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prefetcher.config import Config, restart_keys

log = logging.getLogger(__name__)


class RestartNotice:
    """Compares each config the loop reads with the one the agent started with."""

    def __init__(self, started: Config, *, report: Callable[[str], None]) -> None:
        self._started = started
        self._report = report
        self.pending: tuple[str, ...] = ()

    def seen(self, cfg: Config) -> Config:
        """``cfg``, after reporting a change in the set of keys that wait for a restart."""
        keys = restart_keys(self._started, cfg)
        if keys != self.pending:
            self.pending = keys
            if keys:
                message = (
                    f"config keys {', '.join(keys)} changed; they take effect only after the agent "
                    "restarts (the values it started with still apply)"
                )
                log.warning("%s", message)
                self._report(message)
            else:
                log.info("config keys that need a restart are back to the values in use; no restart pending")
        return cfg
