"""Which model digests each node holds warm: an annotation on every agent's own Node.

Each agent writes the digests warm on its node to ``ANNOTATION`` (sorted, comma-separated), only
when the set changes. Pacing reads every node's annotation with one metadata-only list (no
status, no images: a few hundred bytes per node) to learn whether any other node holds a digest
warm, which is when more than ``fleet.seedPulls`` nodes may pull it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubernetes import client

from prefetcher.adapters.kube_api import Collection, kube_errors, list_items

ANNOTATION = "modelcar-prefetcher.io/warm"
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"


class NodeWarmth:
    """Publishes this node's warm digests and reads the other nodes'."""

    def __init__(self, api: Any, *, node_name: str, timeout_seconds: float = 10.0) -> None:
        self._core: Any = client.CoreV1Api(api)
        self._node, self._timeout = node_name, timeout_seconds
        self._last: str | None = None

    def publish(self, keys: Iterable[str]) -> None:
        """Write the digests warm here unless they equal what was last written."""
        text = ",".join(sorted(set(keys)))
        if text == self._last:
            return
        body = {"metadata": {"annotations": {ANNOTATION: text}}}
        with kube_errors(f"annotating node {self._node}"):
            response = self._core.patch_node(
                self._node, body, _preload_content=False, _request_timeout=(self._timeout, self._timeout)
            )
            response.release_conn()
        self._last = text

    def elsewhere(self) -> frozenset[str]:
        """The digests some other node holds warm."""
        nodes = Collection("nodes", self._core.list_node, (("_headers", {"Accept": METADATA_ONLY}),))
        keys: set[str] = set()
        for item in list_items(nodes, timeout_seconds=self._timeout):
            metadata = item.get("metadata") or {}
            if metadata.get("name") != self._node:
                text = (metadata.get("annotations") or {}).get(ANNOTATION) or ""
                keys.update(k for k in text.split(",") if k)
        return frozenset(keys)
