"""Reads what the agents publish across the cluster: every Node's summary and the InferenceServices.

Read only (get/list on nodes and inferenceservices); used by ``prefetcher status`` with the
operator's kubeconfig and by the agent that reports warmth. Lists are paged; each summary is decoded
as untrusted text by ``core.warmth.read_summary`` (junk reads as ``Unreadable``, with the reason).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from kubernetes import client

from prefetcher.adapters import kube_api
from prefetcher.adapters.kube_api import Collection, KubeStatusError, isvc_collection
from prefetcher.adapters.node_status import ANNOTATION
from prefetcher.core.isvc import extract_models
from prefetcher.core.refs import parse_reference
from prefetcher.core.warmth import Summary, read_summary
from prefetcher.errors import InvalidReferenceError

PAGE_SIZE = 500
TIMEOUT_SECONDS = 10


def list_all(collection: Collection) -> Iterator[Mapping[str, Any]]:
    """Every item of ``collection``, page by page."""
    token: str | None = None
    while True:
        page = kube_api.list_page(
            collection, continue_token=token, limit=PAGE_SIZE, timeout_seconds=TIMEOUT_SECONDS
        )
        yield from (item for item in page.get("items") or () if isinstance(item, Mapping))
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return


def node_summaries(api: Any) -> dict[str, Summary]:
    """Each Node's name and its agent's summary (None when it has none, ``Unreadable`` when junk)."""
    nodes = Collection("nodes", client.CoreV1Api(api).list_node)
    summaries: dict[str, Summary] = {}
    for node in list_all(nodes):
        metadata = node.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        summaries[str(metadata.get("name", ""))] = read_summary(annotations.get(ANNOTATION))
    return summaries


def isvc_refs(api: Any, namespace: str | None = None) -> dict[str, tuple[str, ...]]:
    """``namespace/name`` of each InferenceService and the references of its image models.

    Empty when InferenceServices cannot be listed (no KServe CRDs: 404; not allowed: 403), as the
    node summaries alone still give every model some node wants.
    """
    refs: dict[str, tuple[str, ...]] = {}
    try:
        for item in list_all(isvc_collection(api, namespace)):
            record = extract_models(item, default_priority=0, scale_to_zero_boost=0)
            uris = (uri for component in record.components for uri in component.uris)
            refs[record.key] = tuple(dict.fromkeys(_canonical(uri) for uri in uris))
    except KubeStatusError as err:
        if err.status not in (403, 404):
            raise
        return {}
    return refs


def _canonical(uri: str) -> str:
    try:
        return parse_reference(uri).canonical()
    except InvalidReferenceError:
        return uri
