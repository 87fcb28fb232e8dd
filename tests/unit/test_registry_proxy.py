"""The counting proxy's bookkeeping, fed answers without a network (the real registry: integration)."""

from __future__ import annotations

import io
import threading
from typing import Any

from tests.support.polling import eventually
from tests.support.registry_proxy import TrafficCounter, blob_digest

DIGEST = "sha256:" + "ab" * 32


class Answer(io.BytesIO):
    """Stands in for ``http.client.HTTPResponse``: a status and a body to read."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        super().__init__(body)
        self.status = status


def copy(counter: TrafficCounter, path: str, body: bytes, **kw: Any) -> bytes:
    out = io.BytesIO()
    method, agent = kw.get("method", "GET"), kw.get("agent", "containerd/1.6.20")
    counter.copy(method, path, {"User-Agent": agent}, Answer(body, kw.get("status", 200)), out)  # type: ignore[arg-type]
    return out.getvalue()


def test_blob_digest_is_read_from_blob_paths_only() -> None:
    assert blob_digest(f"/v2/models/a/b/blobs/{DIGEST}") == DIGEST
    assert blob_digest(f"/v2/models/a/blobs/{DIGEST}?ns=127.0.0.1%3A5000") == DIGEST
    assert blob_digest(f"/v2/models/a/manifests/{DIGEST}") == ""
    assert blob_digest("/v2/") == ""


def test_blob_gets_are_counted_by_digest_and_client_and_bodies_pass_unchanged() -> None:
    counter = TrafficCounter()
    body = bytes(range(256)) * 5000
    assert copy(counter, f"/v2/m/blobs/{DIGEST}", body) == body
    assert copy(counter, f"/v2/m/blobs/{DIGEST}", body, agent="Go-http-client/1.1") == body
    traffic = counter.blob(DIGEST)
    assert (traffic.gets, traffic.bytes_sent) == (2, 2 * len(body))
    assert dict(traffic.by_agent) == {"containerd": 1, "go-http-client": 1}
    assert (traffic.active, traffic.most_at_once) == (0, 1)
    assert counter.bytes_sent() == 2 * len(body)


def test_manifests_heads_and_errors_are_passed_on_but_not_counted() -> None:
    counter = TrafficCounter()
    assert copy(counter, f"/v2/m/manifests/{DIGEST}", b"{}") == b"{}"
    assert copy(counter, f"/v2/m/blobs/{DIGEST}", b"", method="HEAD") == b""
    assert copy(counter, f"/v2/m/blobs/{DIGEST}", b"not found", status=404) == b"not found"
    assert counter.blob(DIGEST).gets == 0 and counter.bytes_sent() == 0


def test_a_held_blob_waits_before_its_body_and_counts_as_at_once() -> None:
    counter = TrafficCounter()
    release = counter.hold(DIGEST)
    threads = [
        threading.Thread(target=copy, args=(counter, f"/v2/m/blobs/{DIGEST}", b"x" * 10)) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    eventually(lambda: counter.blob(DIGEST).active == 3, timeout_seconds=10, what="three held transfers")
    assert counter.blob(DIGEST).bytes_sent == 0
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    traffic = counter.blob(DIGEST)
    assert (traffic.gets, traffic.most_at_once, traffic.bytes_sent, traffic.active) == (3, 3, 30, 0)


def test_connections_open_at_once_are_tracked() -> None:
    counter = TrafficCounter()
    for delta in (1, 1, -1, 1, -1, -1):
        counter.connection(delta)
    assert (counter.connections, counter.most_connections) == (0, 2)
