"""Which model digests each node holds warm: an annotation on every agent's own Node.

Each agent writes the digests warm on its node to ``ANNOTATION`` (sorted, comma-separated), only
when the set changes. Pacing reads every node's annotation with one metadata-only list (no
status, no images: a few hundred bytes per node) to learn whether any other node holds a digest
warm, which is when more than ``fleet.seedPulls`` nodes may pull it.

Anyone allowed to patch a Node can write the annotation, so another node's is read by
``core.pacing.warm_keys``: only well-formed digest (or unpinned reference) entries count, junk is
ignored. This node's own annotation, found different from what it last wrote, is written again at
the next ``publish``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubernetes import client

from prefetcher.adapters.kube_api import Collection, discard, kube_errors, list_items
from prefetcher.core.pacing import warm_keys

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
            discard(response)
        self._last = text

    def elsewhere(self) -> frozenset[str]:
        """The digests some other node holds warm (its annotation's valid entries)."""
        nodes = Collection("nodes", self._core.list_node, (("_headers", {"Accept": METADATA_ONLY}),))
        keys: set[str] = set()
        for item in list_items(nodes, timeout_seconds=self._timeout):
            metadata = item.get("metadata") or {}
            text = (metadata.get("annotations") or {}).get(ANNOTATION) or ""
            if metadata.get("name") != self._node:
                keys.update(warm_keys(str(text)))
            elif self._last is not None and text != self._last:
                self._last = None  # someone else wrote ours: publish it again
        return frozenset(keys)
