"""Frozen data types shared by the planner, the agent and the adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from prefetcher.core.refs import ImageRef


@dataclass(frozen=True)
class ModelRequest:
    """A model some source wants warm, before its reference is resolved at the registry."""

    uri: str
    priority: int = 0
    source: str = ""


@dataclass(frozen=True)
class DesiredModel:
    """A model resolved to a pinned reference, with the compressed size the registry reports."""

    ref: ImageRef
    priority: int
    size_bytes: int
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class CachedImage:
    """An image present in the runtime's store, as CRI ``ListImages`` reports it."""

    id: str
    repo_digests: tuple[str, ...] = ()
    repo_tags: tuple[str, ...] = ()
    size_bytes: int = 0
    pinned: bool = False

    @property
    def refs(self) -> frozenset[str]:
        """Every name the runtime knows this image by."""
        return frozenset(self.repo_digests) | frozenset(self.repo_tags)


@dataclass(frozen=True)
class ManagedImage:
    """An image the agent pulled itself, as remembered in its state file.

    ``image_id`` and ``image_size_bytes`` are what the runtime reported right after the agent's own
    pull: the image is the agent's to evict only while the runtime still reports both.
    """

    ref: str
    image_id: str
    pulled_at: float
    last_desired_at: float
    cost_bytes: int
    image_size_bytes: int


@dataclass(frozen=True)
class DiskState:
    """Usage of the filesystem holding the runtime's image store, as statvfs reports it."""

    total_bytes: int
    used_bytes: int

    @property
    def usage_ratio(self) -> float:
        """Used over total, as kubelet computes its image GC thresholds."""
        return self.used_bytes / self.total_bytes if self.total_bytes else 1.0


@dataclass(frozen=True)
class Budget:
    """The limits the planner holds to."""

    max_usage_percent: float
    unpack_factor: float = 2.0
    eviction_enabled: bool = True
    eviction_grace_seconds: float = 0.0

    def limit_bytes(self, disk: DiskState) -> int:
        """Bytes of the image filesystem the node may use, agent pulls included."""
        return int(disk.total_bytes * self.max_usage_percent / 100)

    def pull_cost(self, size_bytes: int) -> int:
        """Estimated disk cost of pulling an image of ``size_bytes`` compressed bytes."""
        return int(size_bytes * self.unpack_factor)


class SkipReason(StrEnum):
    """Why a desired model is not pulled; a bounded label for metrics and Events."""

    BUDGET = "budget"
    TOO_LARGE = "too_large"
    BACKOFF = "backoff"
    UNRESOLVED = "unresolved"
    INVALID_REFERENCE = "invalid_reference"
    TAG_REJECTED = "tag_rejected"
    IN_FLIGHT = "in_flight"
    PACED = "paced"  # waiting for a turn among the nodes pulling it (fleet pacing)


class EvictionReason(StrEnum):
    """Why an image is removed; a bounded label for metrics and Events."""

    NOT_DESIRED = "not_desired"
    MAKE_ROOM = "make_room"


@dataclass(frozen=True)
class Pull:
    """A planned pull with its estimated disk cost."""

    model: DesiredModel
    cost_bytes: int


@dataclass(frozen=True)
class Eviction:
    """A planned removal of an image the agent pulled."""

    image_id: str
    refs: tuple[str, ...]
    reason: EvictionReason
    freed_bytes: int


@dataclass(frozen=True)
class Skip:
    """A desired model that is not pulled now, and why."""

    ref: str
    reason: SkipReason
    message: str
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What one reconcile pass will do; built by ``planner.plan`` and nothing else."""

    pulls: tuple[Pull, ...] = ()
    evictions: tuple[Eviction, ...] = ()
    skips: tuple[Skip, ...] = ()
    warm: tuple[DesiredModel, ...] = ()
    limit_bytes: int = 0
    used_bytes: int = 0
    projected_bytes: int = 0
    notes: tuple[str, ...] = field(default=())
