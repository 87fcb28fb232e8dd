"""A per-node summary operators read with kubectl: an annotation on this node, patched on change.

``kubectl get node N -o jsonpath='{.metadata.annotations.modelcar-prefetcher\\.io/summary}'``
shows warm models and bytes, the budget, what is pulling or skipped, and the last error. The
annotation is written only when its content changes, so a steady node causes no API traffic.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kubernetes import client

from prefetcher.adapters.kube_api import kube_errors

log = logging.getLogger(__name__)
ANNOTATION = "modelcar-prefetcher.io/summary"
TIMEOUT_SECONDS = 10


class NodeSummary:
    """Patches ``ANNOTATION`` on the node named ``node_name`` with the given summary."""

    def __init__(self, api: Any, *, node_name: str) -> None:
        self._core = client.CoreV1Api(api)
        self._node = node_name
        self._last = ""

    def publish(self, summary: dict[str, Any]) -> None:
        """Write ``summary`` unless it equals what was last written."""
        text = json.dumps(summary, sort_keys=True, separators=(",", ":"))
        if text == self._last:
            return
        body = {"metadata": {"annotations": {ANNOTATION: text}}}
        with kube_errors(f"annotating node {self._node}"):  # transport errors too, not only ApiException
            self._core.patch_node(self._node, body, _request_timeout=TIMEOUT_SECONDS)
        self._last = text
