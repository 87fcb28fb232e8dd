"""Test support: builders of planner inputs shared by the planner tests, the reconciler tests and bench."""

from __future__ import annotations

import hashlib

from prefetcher.core.model import CachedImage, DesiredModel, ManagedImage
from prefetcher.core.refs import ImageRef

GIB = 1024**3


def digest(seed: str) -> str:
    """A valid sha256 digest derived from ``seed``."""
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def model(name: str, *, priority: int = 0, size: int = GIB) -> DesiredModel:
    """A desired model pinned to a digest derived from its name."""
    ref = ImageRef("registry.test:5000", f"models/{name}", None, digest(name))
    return DesiredModel(ref, priority, size, (f"test {name}",))


def cached_of(m: DesiredModel, *, extra_refs: tuple[str, ...] = (), pinned: bool = False) -> CachedImage:
    """The image the runtime would hold after pulling ``m``."""
    return CachedImage(
        id=digest("id-" + m.ref.canonical()),
        repo_digests=(m.ref.canonical(), *extra_refs),
        size_bytes=m.size_bytes,
        pinned=pinned,
    )


def managed_of(m: DesiredModel, *, last_desired_at: float = 0.0, cost: int | None = None) -> ManagedImage:
    """The state-file record of the agent having pulled ``m``."""
    return ManagedImage(
        ref=m.ref.canonical(),
        image_id=digest("id-" + m.ref.canonical()),
        pulled_at=0.0,
        last_desired_at=last_desired_at,
        cost_bytes=cost if cost is not None else 2 * m.size_bytes,
        image_size_bytes=m.size_bytes,
    )
