"""Model sources combined: the models file beside InferenceServices."""

from __future__ import annotations

from collections.abc import Iterable

from prefetcher.core.model import ModelRequest
from prefetcher.ports import ModelSource


class MergedSource:
    """Every request of every source, in order; a source that fails fails the whole pass.

    Failing rather than skipping matters: a source not listed yet must never look like one that
    wants nothing, or its models would be evicted.
    """

    def __init__(self, *sources: ModelSource) -> None:
        self._sources = sources

    def requests(self) -> Iterable[ModelRequest]:
        """The models all sources want now."""
        return [request for source in self._sources for request in source.requests()]
