"""The counting proxy, and Distribution's pull-through cache as a mirror, against the real registries.

What the fleet tests and ``bench/fleet_pull.py`` rely on: the counting front reports exactly the
bytes and GETs the origin served per blob and who asked; containerd's ``hosts.toml`` sends a pull
through the mirror; and what the mirror (Debian's ``docker-registry``, Distribution 2.8.2) asks of
the origin. That last part is the engine's behaviour, measured here so the operator guide states
it from a test: a miss costs the origin two transfers of the blob (one streamed to the client, one
stored, fetched separately; distribution/distribution#3569 joined the two after 2.8), each request
that arrives while the blob is being fetched costs one more (the cache serves it straight from the
origin), and once stored the origin is not asked again.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.containerd import ContainerdFactory, hosts_toml
from tests.support.mirror import OriginMirror, origin_with_mirror
from tests.support.oci import OCI_MANIFEST, push_modelcar
from tests.support.pods import CriPods
from tests.support.polling import eventually
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration
MIB = 1024**2
CLIENT_UA = {"User-Agent": "containerd/1.6.20+unknown", "Accept": OCI_MANIFEST}


@pytest.fixture
def fleet_registries(tmp_path: Path) -> Iterator[OriginMirror]:
    with origin_with_mirror(tmp_path) as running:
        yield running


def fetch(host: str, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, timeout=60)
    try:
        conn.request(method, path, headers=CLIENT_UA)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def stored_by_mirror(mirror: RunningRegistry, digest: str) -> bool:
    """The cache logs a scheduler entry once it has committed the blob to its storage."""
    lines = mirror.log_file.read_text(errors="replace").splitlines()
    assert not [line for line in lines if "Error committing to storage" in line], lines[-5:]
    return any("Adding new scheduler entry" in line and digest in line for line in lines)


def layer_size(registries: OriginMirror, repository: str, digest: str) -> int:
    """The blob's size, read from the origin itself (not counted by the front)."""
    status, body = fetch(registries.origin.host, f"/v2/{repository}/blobs/{digest}")
    assert status == 200
    return len(body)


def test_the_front_counts_each_blob_get_its_bytes_and_who_asked(fleet_registries: OriginMirror) -> None:
    image = push_modelcar(fleet_registries.origin, "models/counted", model_size_bytes=3 * MIB, seed=1201)
    layer = image.layer_digests[-1]
    counter = fleet_registries.front.counter
    assert fetch(fleet_registries.host, f"/v2/models/counted/manifests/{image.digest}")[0] == 200
    assert fetch(fleet_registries.host, f"/v2/models/counted/blobs/{layer}", "HEAD")[0] == 200
    assert counter.bytes_sent() == 0, "manifests and HEADs are not blob bytes"

    status, body = fetch(fleet_registries.host, f"/v2/models/counted/blobs/{layer}")
    assert (status, sha256(body)) == (200, layer)
    status, body = fetch(fleet_registries.host, f"/v2/models/counted/blobs/{layer}")
    traffic = counter.blob(layer)
    assert (traffic.gets, traffic.bytes_sent, dict(traffic.by_agent)) == (2, 2 * len(body), {"containerd": 2})
    assert traffic.active == 0 and traffic.most_at_once == 1
    assert traffic.last_byte_at >= traffic.first_byte_at > 0
    assert counter.blob(image.layer_digests[0]).gets == 0
    assert counter.most_connections >= 1
    eventually(lambda: counter.connections == 0, timeout_seconds=10, what="the front's connections closed")


def test_a_miss_costs_the_origin_two_transfers_and_a_stored_blob_none(fleet_registries: OriginMirror) -> None:
    image = push_modelcar(fleet_registries.origin, "models/cached", model_size_bytes=8 * MIB, seed=1202)
    layer = image.layer_digests[-1]
    path = f"/v2/models/cached/blobs/{layer}"

    status, body = fetch(fleet_registries.mirror.host, path)
    assert (status, sha256(body)) == (200, layer)
    mirror = fleet_registries.mirror
    eventually(lambda: stored_by_mirror(mirror, layer), timeout_seconds=60, what="the blob in the mirror")
    traffic = fleet_registries.front.counter.blob(layer)
    assert traffic.active == 0
    # Distribution 2.8: one fetch streams to the client, another is stored (#3569 joined them later).
    assert (traffic.gets, traffic.bytes_sent, dict(traffic.by_agent)) == (
        2,
        2 * len(body),
        {"go-http-client": 2},
    )

    for _ in range(3):
        status, body = fetch(mirror.host, path)
        assert (status, sha256(body)) == (200, layer)
    assert fleet_registries.front.counter.blob(layer).gets == 2, "a stored blob went back to the origin"


def test_requests_during_the_first_fetch_each_go_to_the_origin(fleet_registries: OriginMirror) -> None:
    """The in-flight window, held open: the origin sends headers of the first fetch, then waits."""
    clients = 3
    image = push_modelcar(fleet_registries.origin, "models/inflight", model_size_bytes=8 * MIB, seed=1203)
    layer = image.layer_digests[-1]
    counter = fleet_registries.front.counter
    release = counter.hold(layer)
    answers: list[tuple[int, str]] = []

    def pull() -> None:
        status, body = fetch(fleet_registries.mirror.host, f"/v2/models/inflight/blobs/{layer}")
        answers.append((status, sha256(body)))

    threads = [threading.Thread(target=pull, daemon=True) for _ in range(clients)]
    # The first request costs two origin GETs (client copy and store), each later one a GET more.
    for n, thread in enumerate(threads, start=1):
        thread.start()
        eventually(
            lambda want=n + 1: counter.blob(layer).gets >= want,
            timeout_seconds=30,
            what=f"the origin asked again for client {n}",
        )
    assert counter.blob(layer).bytes_sent == 0, "the hold let a body through"
    release.set()
    for thread in threads:
        thread.join(timeout=60)
    assert answers == [(200, layer)] * clients
    mirror = fleet_registries.mirror
    eventually(lambda: stored_by_mirror(mirror, layer), timeout_seconds=60, what="the blob in the mirror")
    traffic = counter.blob(layer)
    assert (traffic.gets, traffic.most_at_once) == (clients + 1, clients + 1)
    assert traffic.bytes_sent == (clients + 1) * layer_size(fleet_registries, image.repository, layer)


def test_containerd_pulls_through_the_mirror_named_in_hosts_toml(
    fleet_registries: OriginMirror, containerd_factory: ContainerdFactory, tmp_path: Path
) -> None:
    image = push_modelcar(fleet_registries.origin, "models/via-mirror", model_size_bytes=4 * MIB, seed=1204)
    ref, layer = fleet_registries.ref(image), image.layer_digests[-1]
    mirror, counter = fleet_registries.mirror, fleet_registries.front.counter
    first, second = containerd_factory(), containerd_factory()
    for daemon in (first, second):
        daemon.trust_registry(fleet_registries.host, mirror=mirror.host)
    hosts = first.workdir / "certs.d" / fleet_registries.host / "hosts.toml"
    assert hosts.read_text() == hosts_toml(fleet_registries.host, mirror=mirror.host)

    with CriPods(first.endpoint, log_root=tmp_path / "pods1") as pods:
        pods.ensure_image(ref)
    eventually(
        lambda: stored_by_mirror(mirror, layer), timeout_seconds=60, what="the mirror to store the layer"
    )
    assert dict(counter.blob(layer).by_agent) == {"go-http-client": 2}, "containerd went to the origin itself"
    with CriPods(second.endpoint, log_root=tmp_path / "pods2") as pods:
        pods.ensure_image(ref)
    assert ref in second.image_refs()
    assert counter.blob(layer).gets == 2, "the second node's pull reached the origin"
