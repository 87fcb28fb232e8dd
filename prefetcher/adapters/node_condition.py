"""A Node condition saying whether this node's models are warm, for taint controllers to gate on.

The Node Readiness Controller (a ``NodeReadinessRule`` in ``bootstrap-only`` mode, KEP-5233) and
similar tools remove a start-up taint once a named Node condition has a given status; this agent
reports that condition (``kubernetes.modelsWarmCondition``, e.g. ``modelcar-prefetcher.io/ModelsWarm``)
beside its own taint removal, which stays available. ``True`` means every model desired for the
node is warm or skipped for a stated reason (the moment the agent would lift its own taint),
``False`` that pulls are pending or running, ``Unknown`` that the last pass failed.

The condition goes into ``status.conditions`` with a strategic merge patch of the node's ``status``
subresource (conditions merge by ``type``, so kubelet's own conditions are untouched), only for the
node named ``node_name``, and only when status, reason or message change.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from prefetcher.errors import KubeError
from prefetcher.ports import Clock

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Condition:
    """What the condition says: ``status`` (True, False, Unknown), a CamelCase reason, a message."""

    status: str
    reason: str
    message: str


def models_warm(*, settled: bool, passed: bool, summary: Mapping[str, Any]) -> Condition:
    """The condition after a pass, from the pass's outcome and the node summary."""
    skipped: Mapping[str, int] = summary.get("skipped") or {}
    counts = f"{summary['warm']} warm, {summary['pulling']} pulling, {sum(skipped.values())} skipped"
    if skipped:
        counts += " (" + ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items())) + ")"
    if not passed:
        return Condition("Unknown", "ReconcileFailed", f"{counts}; last pass failed: {summary['lastError']}")
    if not settled:
        return Condition("False", "Pulling", counts)
    reason = "ModelsWarmOrSkipped" if skipped else "ModelsWarm"
    return Condition("True", reason, counts)


class NodeCondition:
    """Keeps the condition ``condition_type`` on the node named ``node_name``."""

    def __init__(self, api: Any, *, node_name: str, condition_type: str, clock: Clock) -> None:
        self._core = client.CoreV1Api(api)
        self._node, self._type = node_name, condition_type
        self._clock = clock
        self._last: Condition | None = None
        self._status: str | None = None  # the status on the node; None until first read

    def publish(self, condition: Condition) -> None:
        """Patch the condition unless it equals what was last written."""
        if condition == self._last:
            return
        try:
            if self._status is None:  # a restarted agent keeps the transition time it set before
                self._status = self._current_status()
            self._patch(condition)
        except ApiException as err:
            raise KubeError(
                f"setting condition {self._type} on node {self._node}: {err.status} {err.reason}"
            ) from err
        if condition.status != self._status:
            log.info(
                "node %s: condition %s is %s (%s: %s)",
                *(self._node, self._type, condition.status, condition.reason, condition.message),
            )
        self._last, self._status = condition, condition.status

    def _current_status(self) -> str:
        node = self._core.read_node(self._node, _request_timeout=TIMEOUT_SECONDS)
        conditions = (node.status.conditions if node.status else None) or []
        found = [c for c in conditions if c.type == self._type]
        return str(found[0].status) if found else ""

    def _patch(self, condition: Condition) -> None:
        now = datetime.fromtimestamp(self._clock.now(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        entry = {
            "type": self._type,
            "status": condition.status,
            "reason": condition.reason,
            "message": condition.message[:1024],
            "lastHeartbeatTime": now,
        }
        # lastTransitionTime moves only when the status does (the API convention for conditions).
        if condition.status != self._status:
            entry["lastTransitionTime"] = now
        body = {"status": {"conditions": [entry]}}
        self._core.patch_node_status(self._node, body, _request_timeout=TIMEOUT_SECONDS)
