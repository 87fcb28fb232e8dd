"""What comes with a model source, and where reports about the agent itself go.

A models file needs nothing else; following InferenceServices brings Events, pull secrets and the
node's after-pass hook (``wiring.cluster``). Both shapes are one ``ModelFeed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prefetcher.agent.status import AfterPass
from prefetcher.ports import EventSink, ModelSource, PullSecrets

if TYPE_CHECKING:
    from prefetcher.wiring.fleet import Fleet


@dataclass(frozen=True)
class ModelFeed:
    """A model source and what comes with it: its Events, stop, after-pass hook and pull secrets.

    ``node_events`` is where reports about the agent itself go (rejected edits): the Node's Events
    in a cluster; None without one, where the log line is the report.
    """

    models: ModelSource
    events: EventSink
    stop: Callable[[], None]
    after_pass: AfterPass | None = None
    pull_secrets: PullSecrets | None = None
    node_events: EventSink | None = None
    fleet: Fleet | None = None


class NodeReports:
    """Reports about the agent itself (a rejected config edit, keys waiting for a restart).

    They are logged where they arise; in a cluster they are also Events on this Node. The config is
    watched before the Kubernetes client exists, so the Node's sink is attached once it does.
    """

    def __init__(self) -> None:
        self._sink: EventSink | None = None

    def attach(self, sink: EventSink | None) -> None:
        """Send reports to ``sink`` from now on (None: the log line stays the only report)."""
        self._sink = sink

    def report(self, reason: str, message: str) -> None:
        """An Event on this Node, when attached to one."""
        if self._sink is not None:
            self._sink.emit(("node",), warning=True, reason=reason, message=message)
