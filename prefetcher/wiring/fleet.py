"""Fleet pull pacing's parts: the slot Leases and the nodes' warm digests, and the Pacer built on them.

Only a node that follows InferenceServices has them (``wiring.cluster``); a models-file node has
no API access and is not paced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prefetcher.agent.pacer import Pacer, pacing_policy
from prefetcher.agent.runtime_support import SystemClock
from prefetcher.config import Config
from prefetcher.metrics import Metrics
from prefetcher.ports import EventSink, FleetWarmth, SlotLeases


@dataclass(frozen=True)
class Fleet:
    """What fleet pacing talks to: the slot Leases, the nodes' warm digests, and this node's name."""

    leases: SlotLeases
    warmth: FleetWarmth
    node: str


def pacer(fleet: Fleet, *, events: EventSink, metrics: Metrics, config: Callable[[], Config]) -> Pacer:
    """This node's side of fleet pacing, following the ``fleet`` section of every config reload."""
    return Pacer(
        leases=fleet.leases,
        warmth=fleet.warmth,
        node=fleet.node,
        clock=SystemClock(),
        events=events,
        metrics=metrics,
        policy=lambda: pacing_policy(config().fleet),
    )

