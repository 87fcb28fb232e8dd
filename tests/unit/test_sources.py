"""Merged model sources: every request of every source, and a failing source fails the pass."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from prefetcher.agent.sources import MergedSource
from prefetcher.core.model import ModelRequest


class Listed:
    def __init__(self, *uris: str, error: Exception | None = None) -> None:
        self.uris, self.error = uris, error

    def requests(self) -> Iterable[ModelRequest]:
        if self.error is not None:
            raise self.error
        return [ModelRequest(uri, 0, f"{id(self)}/{uri}") for uri in self.uris]


def test_requests_of_both_sources_in_order() -> None:
    merged = MergedSource(Listed("oci://a/x:1"), Listed("oci://b/y:1", "oci://a/x:1"))
    assert [r.uri for r in merged.requests()] == ["oci://a/x:1", "oci://b/y:1", "oci://a/x:1"]


def test_a_source_not_ready_fails_the_pass_instead_of_wanting_nothing() -> None:
    merged = MergedSource(Listed("oci://a/x:1"), Listed(error=RuntimeError("not listed yet")))
    with pytest.raises(RuntimeError, match="not listed yet"):
        merged.requests()
