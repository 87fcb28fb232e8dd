"""``CriImageRuntime`` against a real containerd pulling from a real registry on loopback."""

from __future__ import annotations

import http.client
import http.server
import os
import select
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefetcher.adapters.cri import CriImageRuntime, CriPull
from prefetcher.errors import PullFailedError, RuntimeUnavailableError
from prefetcher.ports import Credentials
from tests.support.containerd import ContainerdFactory, RunningContainerd
from tests.support.oci import PushedImage, push_modelcar
from tests.support.pods import ContainerSpec, CriPods
from tests.support.polling import eventually
from tests.support.registry import RunningRegistry, start_registry

pytestmark = pytest.mark.integration

PULL_TIMEOUT_SECONDS = 120.0
MiB = 1024 * 1024


@pytest.fixture
def runtime(containerd: RunningContainerd) -> Iterator[CriImageRuntime]:
    with CriImageRuntime(containerd.endpoint) as cri:
        yield cri


def _model(
    registry: RunningRegistry, name: str, *, tag: str = "v1", model_size_bytes: int = 0, seed: int = 0
) -> PushedImage:
    """A modelcar whose content (hence image id) belongs to this test alone."""
    files = {"name.txt": f"{name}\n".encode()}
    return push_modelcar(
        registry, f"cri/{name}", tag=tag, files=files, model_size_bytes=model_size_bytes, seed=seed
    )


def _pull(cri: CriImageRuntime, ref: str, credentials: Credentials | None = None) -> str:
    return cri.start_pull(ref, credentials=credentials, timeout_seconds=PULL_TIMEOUT_SECONDS).result()


def _pull_error(handle: CriPull) -> PullFailedError:
    with pytest.raises(PullFailedError) as caught:
        handle.result(timeout_seconds=PULL_TIMEOUT_SECONDS)
    assert handle.done()
    return caught.value


def test_pull_by_digest_is_listed_under_its_repo_digest(
    runtime: CriImageRuntime, registry: RunningRegistry
) -> None:
    image = _model(registry, "by-digest")
    handle = runtime.start_pull(image.ref, credentials=None, timeout_seconds=PULL_TIMEOUT_SECONDS)
    image_id = handle.result(timeout_seconds=PULL_TIMEOUT_SECONDS)

    assert handle.done()
    assert image_id.startswith("sha256:")
    listed = {cached.id: cached for cached in runtime.list_images()}
    assert image.ref in listed[image_id].repo_digests
    assert listed[image_id].repo_tags == ()  # containerd names a digest pull by its digest only
    assert listed[image_id].size_bytes > 0
    status = runtime.image_status(image.ref)
    assert status is not None
    assert status.id == image_id
    assert runtime.image_status(image_id) == status


def test_pull_by_tag_records_tag_and_digest(runtime: CriImageRuntime, registry: RunningRegistry) -> None:
    image = _model(registry, "by-tag", tag="v7")

    image_id = _pull(runtime, image.tag_ref)

    status = runtime.image_status(image.tag_ref)
    assert status is not None
    assert status.id == image_id
    assert status.repo_tags == (image.tag_ref,)
    assert status.repo_digests == (image.ref,)
    assert status.refs == {image.tag_ref, image.ref}


def test_image_status_of_an_absent_image_is_none(runtime: CriImageRuntime, registry: RunningRegistry) -> None:
    assert runtime.image_status(f"{registry.host}/cri/never-pushed:v1") is None


def test_remove_image_forgets_every_name_and_is_idempotent(
    runtime: CriImageRuntime, registry: RunningRegistry
) -> None:
    image = _model(registry, "removed")
    image_id = _pull(runtime, image.tag_ref)
    _pull(runtime, image.ref)

    runtime.remove_image(image_id)

    assert runtime.image_status(image.ref) is None
    assert runtime.image_status(image.tag_ref) is None
    assert image_id not in {cached.id for cached in runtime.list_images()}
    runtime.remove_image(image_id)


def test_images_in_use_reports_the_image_of_a_running_container(
    runtime: CriImageRuntime, registry: RunningRegistry, containerd: RunningContainerd, tmp_path: Path
) -> None:
    image = _model(registry, "in-use")
    image_id = _pull(runtime, image.ref)
    assert image_id not in runtime.images_in_use()

    with (
        CriPods(containerd.endpoint, log_root=tmp_path / "logs") as pods,
        pods.sandbox("in-use") as sandbox,
    ):
        container = sandbox.start(ContainerSpec("server", image.ref, command=["sleep", "infinity"]))
        sandbox.wait_running(container)
        in_use = runtime.images_in_use()
        assert image_id in in_use
        assert image.ref in in_use

    assert image_id not in runtime.images_in_use()


def test_pull_of_a_missing_image_fails_not_found(runtime: CriImageRuntime, registry: RunningRegistry) -> None:
    handle = runtime.start_pull(
        f"{registry.host}/cri/never-pushed:v1", credentials=None, timeout_seconds=PULL_TIMEOUT_SECONDS
    )

    error = _pull_error(handle)

    assert error.reason == "not_found"
    assert "never-pushed" in str(error)


def test_credentials_reach_the_registry(runtime: CriImageRuntime, tmp_path: Path) -> None:
    with start_registry(tmp_path / "private", htpasswd=("puller", "s3cret")) as private:
        image = push_modelcar(private, "cri/private", files={"private.txt": b"private\n"})

        anonymous = runtime.start_pull(image.ref, credentials=None, timeout_seconds=PULL_TIMEOUT_SECONDS)
        assert _pull_error(anonymous).reason == "unauthorized"
        wrong = Credentials(username="puller", password="wrong")
        denied = runtime.start_pull(image.ref, credentials=wrong, timeout_seconds=PULL_TIMEOUT_SECONDS)
        assert _pull_error(denied).reason == "unauthorized"

        image_id = _pull(runtime, image.ref, Credentials(username="puller", password="s3cret"))

    assert runtime.image_status(image.ref) is not None
    runtime.remove_image(image_id)


def test_a_missing_socket_is_reported_as_missing(tmp_path: Path) -> None:
    socket = tmp_path / "absent" / "containerd.sock"
    with CriImageRuntime(f"unix://{socket}") as cri, pytest.raises(RuntimeUnavailableError) as caught:
        cri.list_images()
    assert "missing" in str(caught.value)
    assert str(socket) in str(caught.value)


def test_a_stopped_containerd_is_unavailable_until_it_is_back(containerd_factory: ContainerdFactory) -> None:
    daemon = containerd_factory()
    with CriImageRuntime(daemon.endpoint, timeout_seconds=5) as cri:
        assert cri.list_images() == []

        daemon.stop()  # SIGTERM: containerd removes its socket
        with pytest.raises(RuntimeUnavailableError, match="is missing") as caught:
            cri.list_images()
        assert daemon.endpoint in str(caught.value)
        with pytest.raises(RuntimeUnavailableError, match="is missing"):
            cri.start_pull("127.0.0.1:1/x:y", credentials=None, timeout_seconds=5)

        daemon.start()
        assert cri.list_images() is not None  # the same channel reconnects

        daemon.stop(kill=True)  # SIGKILL: a stale socket file that refuses connections
        with pytest.raises(RuntimeUnavailableError, match="refused the connection") as caught:
            cri.images_in_use()
        assert str(daemon.socket) in str(caught.value)
        with pytest.raises(RuntimeUnavailableError, match="refused the connection"):
            cri.start_pull("127.0.0.1:1/x:y", credentials=None, timeout_seconds=600)

        daemon.start()
        assert cri.images_in_use() == frozenset()  # the same channel reconnects again


def _used_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def test_a_pull_larger_than_the_disk_fails_no_space_and_leaves_no_residue(
    containerd_factory: ContainerdFactory, registry: RunningRegistry
) -> None:
    daemon = containerd_factory(root_size_mb=96)
    # Uncompressed layers: the content store and the unpacked snapshot each need the model size.
    image = _model(registry, "too-big", model_size_bytes=64 * MiB, seed=7)
    with CriImageRuntime(daemon.endpoint) as cri:
        baseline = _used_bytes(daemon.root)
        handle = cri.start_pull(image.ref, credentials=None, timeout_seconds=PULL_TIMEOUT_SECONDS)

        error = _pull_error(handle)

        assert error.reason == "no_space", str(error)
        assert cri.image_status(image.ref) is None
        eventually(
            lambda: _used_bytes(daemon.root) <= baseline + 4 * MiB,
            timeout_seconds=30,
            what=f"containerd to discard the partial pull (baseline {baseline} bytes)",
        )


def _peer_closed(conn: socket.socket) -> bool:
    """True when the client closed its end (readable, and a peek reads end of file)."""
    readable, _, _ = select.select([conn], [], [], 0)
    return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""


class _GatedRegistryProxy:
    """An HTTP proxy in front of the registry that holds back chosen blobs until released."""

    def __init__(self, registry: RunningRegistry, gated_digests: tuple[str, ...]) -> None:
        self.upstream = urllib.parse.urlsplit(registry.url)
        self.gated = gated_digests
        self.blob_requested = threading.Event()
        self.release = threading.Event()
        self.client_hung_up = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy.forward(self, "GET")

            def do_HEAD(self) -> None:
                proxy.forward(self, "HEAD")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def forward(self, handler: http.server.BaseHTTPRequestHandler, method: str) -> None:
        if method == "GET" and any(handler.path.endswith(f"/blobs/{d}") for d in self.gated):
            self.blob_requested.set()
            while not self.release.wait(timeout=0.05):
                if _peer_closed(handler.connection):
                    self.client_hung_up.set()
                    return
        conn = http.client.HTTPConnection(self.upstream.hostname or "", self.upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(method, handler.path, headers=headers)
            answer = conn.getresponse()
            body = answer.read()
            handler.send_response(answer.status)
            for key, value in answer.getheaders():
                skip = key.lower() in ("connection", "transfer-encoding")
                if not skip and not (method == "GET" and key.lower() == "content-length"):
                    handler.send_header(key, value)
            if method == "GET":
                handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if method == "GET":
                handler.wfile.write(body)
        except (ConnectionError, TimeoutError):
            pass  # containerd hung up (the pull was cancelled)
        finally:
            conn.close()

    def __enter__(self) -> _GatedRegistryProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_cancel_aborts_an_in_progress_pull(runtime: CriImageRuntime, registry: RunningRegistry) -> None:
    image = _model(registry, "cancelled", model_size_bytes=4 * MiB, seed=11)
    with _GatedRegistryProxy(registry, image.layer_digests) as proxy:
        ref = f"{proxy.host}/{image.repository}@{image.digest}"
        handle = runtime.start_pull(ref, credentials=None, timeout_seconds=PULL_TIMEOUT_SECONDS)
        assert proxy.blob_requested.wait(timeout=PULL_TIMEOUT_SECONDS), "containerd never fetched a layer"
        assert not handle.done()

        handle.cancel()

        assert _pull_error(handle).reason == "cancelled"
        assert proxy.client_hung_up.wait(timeout=30), "containerd kept downloading the cancelled pull"
        assert runtime.image_status(ref) is None
        proxy.release.set()
        image_id = _pull(runtime, ref)  # containerd is fine and can pull the same image afterwards
    runtime.remove_image(image_id)


def test_a_pull_past_its_deadline_fails_timeout(runtime: CriImageRuntime, registry: RunningRegistry) -> None:
    image = _model(registry, "deadline", model_size_bytes=MiB, seed=12)
    with _GatedRegistryProxy(registry, image.layer_digests) as proxy:
        ref = f"{proxy.host}/{image.repository}@{image.digest}"
        handle = runtime.start_pull(ref, credentials=None, timeout_seconds=2)

        error = _pull_error(handle)

        assert error.reason == "timeout"
        assert proxy.blob_requested.is_set()
        assert proxy.client_hung_up.wait(timeout=30), "containerd kept downloading past the deadline"
        assert runtime.image_status(ref) is None
