"""The node's image store through the container runtime's CRI ``runtime.v1`` gRPC socket.

``CriImageRuntime`` implements the ``ImageRuntime`` port. It is the only module that imports
``grpc`` and the generated stubs in ``cri_api``; gRPC errors are translated here, at the
boundary, and raised ``from`` the ``grpc.RpcError``:

- the socket missing, refusing, not permitted, or a call past its deadline ->
  ``RuntimeUnavailableError`` whose message names the endpoint and says which it was;
- a pull that fails -> ``PullFailedError`` with a bounded ``reason`` (``PULL_FAILURE_REASONS``),
  classified from the status code and, for containerd (which answers ``UNKNOWN`` for most
  failures), from the error text;
- a removal that fails for another reason -> ``RemoveFailedError``.

Every call carries a deadline: ``timeout_seconds`` for ordinary calls, the caller's own for a pull.
Pulls run as gRPC futures so the executor can watch and cancel them; cancelling the call makes
the runtime abandon the pull and discard its partial content.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from prefetcher.adapters.cri_api import api_pb2, api_pb2_grpc
from prefetcher.core.model import CachedImage
from prefetcher.errors import (
    ConfigError,
    PullFailedError,
    PullFailure,
    RemoveFailedError,
    RuntimeUnavailableError,
)
from prefetcher.ports import Credentials

# The sockets kubelet and crictl look for, in their order; k3s embeds its own containerd.
DEFAULT_ENDPOINTS: tuple[str, ...] = (
    "unix:///run/containerd/containerd.sock",
    "unix:///run/crio/crio.sock",
    "unix:///var/run/cri-dockerd.sock",
    "unix:///run/k3s/containerd/containerd.sock",
)
PULL_FAILURE_REASONS = frozenset({"not_found", "unauthorized", "no_space", "timeout", "cancelled", "error"})
# kubelet's CRI client limit: ListImages/ListContainers on a busy node exceed gRPC's 4 MiB default.
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    # Reconnect promptly after a runtime restart instead of backing off for up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
_PROBE_TIMEOUT_SECONDS = 1.0
_NO_SPACE_MARKERS = ("no space left on device", "disk quota exceeded", "enospc")
_UNAUTHORIZED_MARKERS = (
    "401 unauthorized",
    "403 forbidden",
    "failed to authorize",
    "authorization failed",
    "unauthorized:",
    "denied:",
)
_NOT_FOUND_MARKERS = (": not found", "manifest unknown", "name unknown", "404 not found")
_T = TypeVar("_T")


def socket_path(endpoint: str) -> str:
    """The filesystem path of a ``unix://`` endpoint (a bare absolute path is accepted too)."""
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://") :]
    elif endpoint.startswith("/"):
        path = endpoint
    else:
        raise ConfigError(f"CRI endpoint {endpoint!r}: expected unix:///path/to/socket")
    if not path.startswith("/"):
        raise ConfigError(f"CRI endpoint {endpoint!r}: the socket path must be absolute")
    return path


def detect_endpoint(candidates: tuple[str, ...] = DEFAULT_ENDPOINTS) -> str:
    """The first candidate endpoint whose path is a socket; ``RuntimeUnavailableError`` if none."""
    for endpoint in candidates:
        try:
            if stat.S_ISSOCK(os.stat(socket_path(endpoint)).st_mode):
                return endpoint
        except OSError:
            continue
    raise RuntimeUnavailableError(
        f"no CRI socket found; tried {', '.join(candidates)}: "
        "set the endpoint explicitly or mount the runtime's socket into the agent"
    )


def socket_problem(endpoint: str, *, connect: bool) -> str | None:
    """Why the endpoint's socket cannot be used (missing, not a socket, not permitted, refused)."""
    path = socket_path(endpoint)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"CRI socket {path} is missing (endpoint {endpoint}); is the runtime running?"
    except PermissionError:
        return f"CRI socket {path} is not permitted: cannot look it up (endpoint {endpoint})"
    if not stat.S_ISSOCK(mode):
        return f"CRI socket {path} is not a socket (endpoint {endpoint})"
    if not connect:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT_SECONDS)
        try:
            probe.connect(path)
        except PermissionError:
            return f"CRI socket {path} is not permitted: connecting needs write access to it"
        except OSError as err:
            if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return f"CRI socket {path} refused the connection (endpoint {endpoint}); is the runtime up?"
            return f"CRI socket {path} cannot be reached (endpoint {endpoint}): {err}"
    return None


def classify_pull_error(status: str, details: str) -> PullFailure:
    """A bounded reason for a failed pull from the gRPC status name and the runtime's message."""
    text = details.lower()
    if any(marker in text for marker in _NO_SPACE_MARKERS):
        return PullFailure.NO_SPACE
    if status == "DEADLINE_EXCEEDED":
        return PullFailure.TIMEOUT
    if status == "CANCELLED":
        return PullFailure.CANCELLED
    if status in ("UNAUTHENTICATED", "PERMISSION_DENIED") or any(
        marker in text for marker in _UNAUTHORIZED_MARKERS
    ):
        return PullFailure.UNAUTHORIZED
    if status == "NOT_FOUND" or any(marker in text for marker in _NOT_FOUND_MARKERS):
        return PullFailure.NOT_FOUND
    return PullFailure.ERROR


def _unavailable(endpoint: str, method: str, err: grpc.RpcError, timeout: float | None) -> str:
    """The message of a ``RuntimeUnavailableError`` for a failed call."""
    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"CRI endpoint {endpoint} did not answer {method} within {timeout}s"
    if code == grpc.StatusCode.UNAVAILABLE:
        problem = socket_problem(endpoint, connect=True)
        if problem:
            return f"{problem} [{method}]"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"CRI endpoint {endpoint} does not implement runtime.v1 {method}: {err.details()}"
    return f"CRI endpoint {endpoint} failed {method}: {code.name}: {err.details()}"


class CriPull:
    """A ``PullHandle`` over a gRPC future of ``ImageService.PullImage``."""

    def __init__(self, future: Any, *, endpoint: str, ref: str, timeout_seconds: float) -> None:
        self._future = future
        self._endpoint = endpoint
        self._ref = ref
        self._timeout_seconds = timeout_seconds

    def done(self) -> bool:
        """True once the pull finished, failed or was cancelled."""
        return bool(self._future.done())

    def result(self, timeout_seconds: float | None = None) -> str:
        """The image id; ``TimeoutError`` if the pull is still running after ``timeout_seconds``."""
        try:
            response: api_pb2.PullImageResponse = self._future.result(timeout=timeout_seconds)
        except grpc.FutureTimeoutError as err:
            raise TimeoutError(f"pull of {self._ref} still running") from err
        except grpc.FutureCancelledError as err:
            raise PullFailedError(f"pull of {self._ref} cancelled", reason=PullFailure.CANCELLED) from err
        except grpc.RpcError as err:
            raise self._translate(err) from err
        return response.image_ref

    def cancel(self) -> None:
        """Abort the pull; the runtime discards its partial content."""
        self._future.cancel()

    def _translate(self, err: grpc.RpcError) -> Exception:
        code, details = err.code(), err.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            return RuntimeUnavailableError(
                _unavailable(self._endpoint, "PullImage", err, self._timeout_seconds)
            )
        reason = classify_pull_error(code.name, details)
        if reason == PullFailure.TIMEOUT:
            details = f"not finished within {self._timeout_seconds}s"
        return PullFailedError(f"pull of {self._ref} failed ({reason}): {details}", reason=reason)


class CriImageRuntime:
    """``ImageRuntime`` over a CRI socket; ``close()`` (or ``with``) releases the channel."""

    def __init__(self, endpoint: str, *, timeout_seconds: float = 10.0) -> None:
        socket_path(endpoint)
        self.endpoint = endpoint if endpoint.startswith("unix://") else f"unix://{endpoint}"
        self.timeout_seconds = timeout_seconds
        self._channel = grpc.insecure_channel(self.endpoint, options=_CHANNEL_OPTIONS)
        # The generated gRPC stubs carry no annotations; their methods are typed at each call.
        self._images: Any = api_pb2_grpc.ImageServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._runtime: Any = api_pb2_grpc.RuntimeServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> CriImageRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the gRPC channel."""
        self._channel.close()

    def list_images(self) -> list[CachedImage]:
        """Every image in the store."""
        response: api_pb2.ListImagesResponse = self._call(
            "ListImages", self._images.ListImages, api_pb2.ListImagesRequest()
        )
        return [_cached_image(image) for image in response.images]

    def image_status(self, ref: str) -> CachedImage | None:
        """The image known by ``ref`` (a name, a digest reference or an image id), or None."""
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))
        response: api_pb2.ImageStatusResponse = self._call("ImageStatus", self._images.ImageStatus, request)
        return _cached_image(response.image) if response.HasField("image") else None

    def start_pull(self, ref: str, *, credentials: Credentials | None, timeout_seconds: float) -> CriPull:
        """Begin pulling ``ref`` with its own deadline; the handle reports the outcome.

        Raises ``RuntimeUnavailableError`` at once when the socket is missing or refuses
        connections; any later failure, the runtime going away included, is reported by the handle.
        """
        self._check_socket("PullImage", connect=True)
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
        if credentials is not None:
            request.auth.CopyFrom(
                api_pb2.AuthConfig(
                    username=credentials.username,
                    password=credentials.password,
                    identity_token=credentials.identity_token,
                )
            )
        # wait_for_ready: a channel still backing off from a runtime restart must not fail the
        # pull at once; the socket just accepted a connection, and the pull's deadline bounds it.
        future = self._images.PullImage.future(request, timeout=timeout_seconds, wait_for_ready=True)
        return CriPull(future, endpoint=self.endpoint, ref=ref, timeout_seconds=timeout_seconds)

    def remove_image(self, image_id: str) -> None:
        """Remove the image and every name it has; removing an absent image is not an error."""
        request = api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image_id))
        try:
            self._invoke("RemoveImage", self._images.RemoveImage, request)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                message = _unavailable(self.endpoint, "RemoveImage", err, self.timeout_seconds)
                raise RuntimeUnavailableError(message) from err
            raise RemoveFailedError(
                f"CRI RemoveImage {image_id} failed: {err.code().name}: {err.details()}"
            ) from err

    def images_in_use(self) -> frozenset[str]:
        """Image ids and names of every container in any state (no filter lists them all)."""
        response: api_pb2.ListContainersResponse = self._call(
            "ListContainers", self._runtime.ListContainers, api_pb2.ListContainersRequest()
        )
        names: set[str] = set()
        for container in response.containers:
            names.update((container.image_ref, container.image_id, container.image.image))
        names.discard("")
        return frozenset(names)

    def _call(self, method: str, rpc: Callable[..., _T], request: object) -> _T:
        """``_invoke`` with every gRPC error translated to ``RuntimeUnavailableError``."""
        try:
            return self._invoke(method, rpc, request)
        except grpc.RpcError as err:
            message = _unavailable(self.endpoint, method, err, self.timeout_seconds)
            raise RuntimeUnavailableError(message) from err

    def _invoke(self, method: str, rpc: Callable[..., _T], request: object) -> _T:
        """Check the socket, then call ``rpc`` with the deadline; gRPC errors pass through."""
        self._check_socket(method)
        try:
            return rpc(request, timeout=self.timeout_seconds)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            if socket_problem(self.endpoint, connect=True) is not None:
                raise
        # The socket accepts connections again (a runtime restart) but the channel is still
        # backing off from the earlier failure: wait for it to connect, within the deadline.
        return rpc(request, timeout=self.timeout_seconds, wait_for_ready=True)

    def _check_socket(self, method: str, *, connect: bool = False) -> None:
        """Fail fast, naming the problem, when the socket is missing, not a socket (or refuses)."""
        problem = socket_problem(self.endpoint, connect=connect)
        if problem:
            raise RuntimeUnavailableError(f"{problem} [{method}]")


def _cached_image(image: api_pb2.Image) -> CachedImage:
    """The core's view of a CRI ``Image``."""
    return CachedImage(
        id=image.id,
        repo_digests=tuple(image.repo_digests),
        repo_tags=tuple(image.repo_tags),
        size_bytes=image.size,
        pinned=image.pinned,
    )
