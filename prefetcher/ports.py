"""The ports: small protocols the agent depends on. Adapters implement them; fakes mirror them.

Only ``prefetcher.adapters`` may import gRPC, HTTP or Kubernetes libraries. Everything else talks
to the outside through these protocols, passed in as keyword-only arguments by ``cli``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from prefetcher.core.model import CachedImage, DiskState, ModelRequest
from prefetcher.core.refs import ImageRef


@dataclass(frozen=True)
class Credentials:
    """Registry credentials; never logged."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<redacted>)"


@dataclass(frozen=True)
class ResolvedImage:
    """A reference pinned at the registry and the compressed bytes the node's platform needs."""

    ref: ImageRef
    size_bytes: int
    platform: str = ""


class PullHandle(Protocol):
    """A pull under way; the executor watches it and may cancel it."""

    def done(self) -> bool:
        """True once the pull finished, failed or was cancelled."""

    def result(self, timeout_seconds: float | None = None) -> str:
        """The image id; raises ``PullFailedError``, ``RuntimeUnavailableError``, or ``TimeoutError``
        while the pull is still running after ``timeout_seconds``."""

    def cancel(self) -> None:
        """Abort the pull (the runtime discards partial content)."""


class ImageRuntime(Protocol):
    """The node's image store, reached through CRI ``runtime.v1``."""

    def list_images(self) -> list[CachedImage]:
        """Every image in the store."""

    def image_status(self, ref: str) -> CachedImage | None:
        """The image known by ``ref``, or None."""

    def start_pull(self, ref: str, *, credentials: Credentials | None, timeout_seconds: float) -> PullHandle:
        """Begin pulling ``ref``; the handle reports the outcome."""

    def remove_image(self, image_id: str) -> None:
        """Remove the image (every name it has)."""

    def images_in_use(self) -> frozenset[str]:
        """Image ids and references of every container in any state."""


class Registry(Protocol):
    """An OCI distribution registry, asked before a pull."""

    def resolve(self, ref: ImageRef, *, credentials: Credentials | None = None) -> ResolvedImage:
        """Pin ``ref`` to a digest and sum the layer sizes; ``credentials`` replace the configured ones."""

    def credentials_for(self, registry: str) -> Credentials | None:
        """Credentials configured for a registry host, if any."""


class PullSecrets(Protocol):
    """Registry credentials of the workloads that want a model (their image pull secrets)."""

    def credentials_for(self, registry: str, sources: tuple[str, ...]) -> Credentials | None:
        """Credentials for ``registry`` of the first of ``sources`` that has some; else None.

        Raises ``CredentialsError`` when none were found and some source's secrets could not be read.
        """


class ModelSource(Protocol):
    """Where the set of models to keep warm comes from (a file, InferenceServices…)."""

    def requests(self) -> Iterable[ModelRequest]:
        """The models wanted now."""


class DiskProbe(Protocol):
    """Measures the image filesystem as kubelet does."""

    def usage(self) -> DiskState:
        """Total and used bytes of the filesystem."""


class Clock(Protocol):
    """Wall time and waiting, so tests can control both."""

    def now(self) -> float:
        """Seconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""


class EventSink(Protocol):
    """Where the agent reports to people (Kubernetes Events, or the log without a cluster)."""

    def emit(self, sources: tuple[str, ...], *, warning: bool, reason: str, message: str) -> None:
        """Report ``reason``/``message`` about the objects named by ``sources``."""


@dataclass(frozen=True)
class LeaseState:
    """A slot Lease of fleet pacing as read: ``holder`` is empty when released."""

    name: str
    holder: str
    version: str
    duration_seconds: float


class SlotLeases(Protocol):
    """The Leases nodes take turns through (``prefetcher.core.pacing``)."""

    def list(self) -> dict[str, LeaseState]:
        """Every slot Lease, by name."""

    def take(self, name: str, *, holder: str, duration_seconds: float, version: str | None) -> str | None:
        """Create (``version`` None) or update that version; the new version, None if another was first."""

    def release(self, name: str, *, version: str) -> None:
        """Delete the Lease unless it changed since ``version``."""


class FleetWarmth(Protocol):
    """Which digests the nodes hold warm."""

    def publish(self, keys: Iterable[str]) -> None:
        """Say which digests this node holds warm."""

    def elsewhere(self) -> frozenset[str]:
        """The digests some other node holds warm."""
