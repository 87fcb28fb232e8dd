"""The Kubernetes adapter's pure parts: watch stream decoding and error translation."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import urllib3
from kubernetes import client

from prefetcher.adapters.kube_api import (
    Collection,
    KubeStatusError,
    ObjectRef,
    kube_errors,
    watch_events,
)
from prefetcher.errors import KubeError

COLLECTION = Collection("things", lambda **_: None)


class StreamedResponse:
    """Just the part of a urllib3 response ``watch_events`` reads: ``stream``."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks, self.error = chunks, error

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Iterator[bytes]:
        yield from self.chunks
        if self.error is not None:
            raise self.error


def line(kind: str, name: str) -> bytes:
    event = {"type": kind, "object": {"metadata": {"name": name, "resourceVersion": "7"}}}
    return json.dumps(event).encode() + b"\n"


def test_watch_events_split_on_lines_across_chunks() -> None:
    data = line("ADDED", "a") + b"\n" + line("MODIFIED", "b") + line("DELETED", "c")
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    got = [
        (e["type"], e["object"]["metadata"]["name"])
        for e in watch_events(COLLECTION, StreamedResponse(chunks))
    ]
    assert got == [("ADDED", "a"), ("MODIFIED", "b"), ("DELETED", "c")]


@pytest.mark.parametrize(
    ("chunks", "error"),
    [
        ([b"{not json\n"], None),
        ([b'{"type": "ADDED"}\n'], None),
        ([b"[1, 2]\n"], None),
        ([line("ADDED", "a")], urllib3.exceptions.ProtocolError("Response ended prematurely")),
        ([], OSError("connection reset")),
    ],
)
def test_broken_watch_streams_raise_kube_error(chunks: list[bytes], error: Exception | None) -> None:
    with pytest.raises(KubeError, match="watching things") as raised:
        list(watch_events(COLLECTION, StreamedResponse(chunks, error)))
    assert raised.value.__cause__ is not None


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (client.ApiException(status=410, reason="Gone"), 410),
        (client.ApiException(status=403, reason="Forbidden"), 403),
        (client.ApiException(status=0, reason="SSLError"), None),
        (urllib3.exceptions.MaxRetryError(None, "/api", None), None),  # type: ignore[arg-type]
        (ConnectionRefusedError(111, "refused"), None),
        (ValueError("bad json"), None),
    ],
)
def test_errors_are_translated_from_their_cause(error: Exception, status: int | None) -> None:
    with pytest.raises(KubeError, match=r"^listing x: ") as raised, kube_errors("listing x"):
        raise error
    assert raised.value.__cause__ is error
    assert (raised.value.status if isinstance(raised.value, KubeStatusError) else None) == status


def test_other_errors_pass_through() -> None:
    with pytest.raises(KeyError), kube_errors("listing x"):
        raise KeyError("a bug, not an API error")


def test_cluster_scoped_objects_have_their_events_in_default() -> None:
    assert ObjectRef("Node", "n1").event_namespace() == "default"
    assert ObjectRef("InferenceService", "m", "team-a").event_namespace() == "team-a"
