"""``CriImageRuntime`` against an in-process CRI gRPC server: mapping and error translation."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from prefetcher.adapters.cri import (
    PULL_FAILURE_REASONS,
    CriImageRuntime,
    classify_pull_error,
    detect_endpoint,
    socket_path,
)
from prefetcher.adapters.cri_api import api_pb2 as cri
from prefetcher.adapters.cri_api import api_pb2_grpc as cri_grpc
from prefetcher.core.model import CachedImage
from prefetcher.errors import ConfigError, PullFailedError, RemoveFailedError, RuntimeUnavailableError
from prefetcher.ports import Credentials

IMAGE_ID = "sha256:" + "a" * 64
REF = "registry.example:5000/models/llm@sha256:" + "b" * 64


@dataclass
class Script:
    """What the fake runtime answers; ``abort`` maps a method name to (code, details)."""

    images: list[cri.Image] = field(default_factory=list)
    containers: list[cri.Container] = field(default_factory=list)
    abort: dict[str, tuple[grpc.StatusCode, str]] = field(default_factory=dict)
    hold: dict[str, threading.Event] = field(default_factory=dict)
    pulls: list[cri.PullImageRequest] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def enter(self, method: str, context: Any) -> None:
        if method in self.hold:
            self.hold[method].wait(timeout=30)
        if method in self.abort:
            context.abort(*self.abort[method])


class FakeImageService(cri_grpc.ImageServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def ListImages(self, request: Any, context: Any) -> cri.ListImagesResponse:
        self.script.enter("ListImages", context)
        return cri.ListImagesResponse(images=self.script.images)

    def ImageStatus(self, request: Any, context: Any) -> cri.ImageStatusResponse:
        self.script.enter("ImageStatus", context)
        for image in self.script.images:
            if request.image.image in (image.id, *image.repo_digests, *image.repo_tags):
                return cri.ImageStatusResponse(image=image)
        return cri.ImageStatusResponse()

    def PullImage(self, request: Any, context: Any) -> cri.PullImageResponse:
        self.script.pulls.append(request)
        self.script.enter("PullImage", context)
        return cri.PullImageResponse(image_ref=IMAGE_ID)

    def RemoveImage(self, request: Any, context: Any) -> cri.RemoveImageResponse:
        self.script.enter("RemoveImage", context)
        self.script.removed.append(request.image.image)
        return cri.RemoveImageResponse()


class FakeRuntimeService(cri_grpc.RuntimeServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def ListContainers(self, request: Any, context: Any) -> cri.ListContainersResponse:
        self.script.enter("ListContainers", context)
        assert not request.HasField("filter"), "containers in every state are wanted"
        return cri.ListContainersResponse(containers=self.script.containers)


@dataclass
class FakeCri:
    endpoint: str
    socket: Path
    script: Script
    server: Any


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeCri]:
    script = Script()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    cri_grpc.add_ImageServiceServicer_to_server(FakeImageService(script), server)
    cri_grpc.add_RuntimeServiceServicer_to_server(FakeRuntimeService(script), server)
    path = tmp_path / "cri.sock"
    server.add_insecure_port(f"unix://{path}")
    server.start()
    yield FakeCri(f"unix://{path}", path, script, server)
    for event in script.hold.values():
        event.set()
    server.stop(None).wait()


@pytest.fixture
def runtime(fake: FakeCri) -> Iterator[CriImageRuntime]:
    with CriImageRuntime(fake.endpoint, timeout_seconds=2) as adapter:
        yield adapter


def test_list_images_maps_every_field(fake: FakeCri, runtime: CriImageRuntime) -> None:
    fake.script.images = [
        cri.Image(id=IMAGE_ID, repo_digests=[REF], repo_tags=["r/m:v1"], size=51_000_000, pinned=True)
    ]

    assert runtime.list_images() == [
        CachedImage(
            id=IMAGE_ID, repo_digests=(REF,), repo_tags=("r/m:v1",), size_bytes=51_000_000, pinned=True
        )
    ]


def test_image_status_is_none_for_an_absent_image(fake: FakeCri, runtime: CriImageRuntime) -> None:
    fake.script.images = [cri.Image(id=IMAGE_ID, repo_digests=[REF], size=1)]

    assert runtime.image_status("other/image:v1") is None
    status = runtime.image_status(REF)
    assert status is not None
    assert status.id == IMAGE_ID


def test_images_in_use_collects_ids_and_names_of_all_containers(
    fake: FakeCri, runtime: CriImageRuntime
) -> None:
    fake.script.containers = [
        cri.Container(
            id="c1", image=cri.ImageSpec(image=REF), image_ref=IMAGE_ID, state=cri.CONTAINER_EXITED
        ),
        cri.Container(id="c2", image=cri.ImageSpec(image="r/x:v1"), image_ref="sha256:" + "c" * 64),
        cri.Container(id="c3", image=cri.ImageSpec(image=""), image_ref="", image_id="sha256:" + "d" * 64),
    ]

    assert runtime.images_in_use() == {
        REF,
        IMAGE_ID,
        "r/x:v1",
        "sha256:" + "c" * 64,
        "sha256:" + "d" * 64,
    }


def test_pull_returns_the_image_id_and_sends_credentials(fake: FakeCri, runtime: CriImageRuntime) -> None:
    credentials = Credentials(username="robot", password="s3cret", identity_token="tok")

    handle = runtime.start_pull(REF, credentials=credentials, timeout_seconds=5)

    assert handle.result(timeout_seconds=5) == IMAGE_ID
    assert handle.done()
    (request,) = fake.script.pulls
    assert request.image.image == REF
    assert (request.auth.username, request.auth.password, request.auth.identity_token) == (
        "robot",
        "s3cret",
        "tok",
    )


def test_pull_without_credentials_sends_no_auth(fake: FakeCri, runtime: CriImageRuntime) -> None:
    runtime.start_pull(REF, credentials=None, timeout_seconds=5).result(timeout_seconds=5)

    assert not fake.script.pulls[0].HasField("auth")


@pytest.mark.parametrize(
    ("code", "details", "reason"),
    [
        (grpc.StatusCode.NOT_FOUND, f'failed to resolve reference "{REF}": {REF}: not found', "not_found"),
        (
            grpc.StatusCode.UNKNOWN,
            "failed to resolve reference: pulling from host r failed with status code "
            "[manifests v1]: 401 Unauthorized",
            "unauthorized",
        ),
        (
            grpc.StatusCode.UNKNOWN,
            "failed to extract layer sha256:ee31: write /var/lib/containerd/x/model.bin: "
            "no space left on device: unknown",
            "no_space",
        ),
        (grpc.StatusCode.UNKNOWN, "failed to do request: connection refused", "error"),
    ],
)
def test_pull_failures_carry_a_bounded_reason(
    fake: FakeCri, runtime: CriImageRuntime, code: grpc.StatusCode, details: str, reason: str
) -> None:
    fake.script.abort["PullImage"] = (code, details)

    handle = runtime.start_pull(REF, credentials=Credentials("u", "hunter2"), timeout_seconds=5)

    with pytest.raises(PullFailedError) as caught:
        handle.result(timeout_seconds=5)
    assert caught.value.reason == reason
    assert REF in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert isinstance(caught.value.__cause__, grpc.RpcError)


def test_a_pull_past_its_deadline_fails_timeout(fake: FakeCri, runtime: CriImageRuntime) -> None:
    fake.script.hold["PullImage"] = threading.Event()

    handle = runtime.start_pull(REF, credentials=None, timeout_seconds=0.3)

    with pytest.raises(PullFailedError) as caught:
        handle.result(timeout_seconds=10)
    assert caught.value.reason == "timeout"
    assert "0.3s" in str(caught.value)


def test_cancel_fails_the_pull_as_cancelled(fake: FakeCri, runtime: CriImageRuntime) -> None:
    fake.script.hold["PullImage"] = threading.Event()
    handle = runtime.start_pull(REF, credentials=None, timeout_seconds=30)
    with pytest.raises(TimeoutError):
        handle.result(timeout_seconds=0.05)  # still running: waiting is not failing
    assert not handle.done()

    handle.cancel()

    with pytest.raises(PullFailedError) as caught:
        handle.result(timeout_seconds=5)
    assert caught.value.reason == "cancelled"
    assert handle.done()


def test_a_slow_call_is_unavailable_naming_the_endpoint(fake: FakeCri) -> None:
    fake.script.hold["ListImages"] = threading.Event()

    with (
        CriImageRuntime(fake.endpoint, timeout_seconds=0.2) as runtime,
        pytest.raises(RuntimeUnavailableError, match=r"did not answer ListImages within 0\.2s") as caught,
    ):
        runtime.list_images()
    assert fake.endpoint in str(caught.value)


def test_an_unimplemented_api_is_unavailable(fake: FakeCri, runtime: CriImageRuntime) -> None:
    fake.script.abort["ListContainers"] = (
        grpc.StatusCode.UNIMPLEMENTED,
        "unknown service runtime.v1.RuntimeService",
    )

    with pytest.raises(RuntimeUnavailableError, match=r"does not implement runtime\.v1 ListContainers"):
        runtime.images_in_use()


def test_remove_image_failures_are_remove_failed(fake: FakeCri, runtime: CriImageRuntime) -> None:
    runtime.remove_image(IMAGE_ID)
    assert fake.script.removed == [IMAGE_ID]

    fake.script.abort["RemoveImage"] = (grpc.StatusCode.INTERNAL, "image is locked")
    with pytest.raises(RemoveFailedError, match="image is locked"):
        runtime.remove_image(IMAGE_ID)


def test_a_stopped_server_leaves_a_socket_that_refuses(fake: FakeCri, runtime: CriImageRuntime) -> None:
    assert runtime.images_in_use() == frozenset()
    fake.server.stop(None).wait()
    _stale_socket(fake.socket)

    with pytest.raises(RuntimeUnavailableError, match="refused the connection") as caught:
        runtime.list_images()
    assert str(fake.socket) in str(caught.value)
    with pytest.raises(RuntimeUnavailableError, match="refused the connection"):
        runtime.start_pull(REF, credentials=None, timeout_seconds=600)


def _stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a killed runtime leaves behind."""
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def test_missing_and_non_socket_paths_fail_before_dialing(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sock"
    with CriImageRuntime(f"unix://{missing}") as adapter:
        with pytest.raises(RuntimeUnavailableError, match="is missing"):
            adapter.list_images()
        with pytest.raises(RuntimeUnavailableError, match="is missing"):
            adapter.start_pull(REF, credentials=None, timeout_seconds=1)
    regular = tmp_path / "file"
    regular.write_text("")
    with (
        CriImageRuntime(str(regular)) as adapter,
        pytest.raises(RuntimeUnavailableError, match="not a socket"),
    ):
        adapter.images_in_use()


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:1234", "unix://relative.sock", "npipe:////./pipe/x"])
def test_endpoints_other_than_unix_sockets_are_config_errors(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="CRI endpoint"):
        socket_path(endpoint)


def test_detect_endpoint_returns_the_first_existing_socket(tmp_path: Path) -> None:
    present = tmp_path / "crio.sock"
    _stale_socket(present)
    (tmp_path / "regular").write_text("")
    candidates = (f"unix://{tmp_path / 'absent.sock'}", f"unix://{tmp_path / 'regular'}", f"unix://{present}")

    assert detect_endpoint(candidates) == f"unix://{present}"
    with pytest.raises(RuntimeUnavailableError, match="no CRI socket found"):
        detect_endpoint(candidates[:2])


@pytest.mark.parametrize(
    ("status", "details", "reason"),
    [
        ("NOT_FOUND", "r/m:v1: not found", "not_found"),
        ("UNKNOWN", "failed to resolve reference: r/m:v1: not found", "not_found"),
        ("UNKNOWN", "reading manifest v1 in r/m: manifest unknown: manifest unknown", "not_found"),
        (
            "UNKNOWN",
            "pulling from host r failed with status code [manifests v1]: 403 Forbidden",
            "unauthorized",
        ),
        (
            "UNKNOWN",
            "failed to authorize: failed to fetch oauth token: unexpected status: 401",
            "unauthorized",
        ),
        ("UNKNOWN", "denied: requested access to the resource is denied", "unauthorized"),
        ("UNAUTHENTICATED", "", "unauthorized"),
        (
            "UNKNOWN",
            "failed to copy: write /var/lib/containerd/ingest/x/data: no space left on device",
            "no_space",
        ),
        ("RESOURCE_EXHAUSTED", "write /x: disk quota exceeded", "no_space"),
        ("DEADLINE_EXCEEDED", "context deadline exceeded", "timeout"),
        ("CANCELLED", "context canceled", "cancelled"),
        ("UNKNOWN", 'failed to parse image reference "UPPER/x": invalid reference format', "error"),
        ("INTERNAL", "", "error"),
    ],
)
def test_classify_pull_error(status: str, details: str, reason: str) -> None:
    assert classify_pull_error(status, details) == reason
    assert reason in PULL_FAILURE_REASONS
