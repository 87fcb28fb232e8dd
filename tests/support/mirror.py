"""Test support: an origin registry whose every served byte is counted, and a pull-through cache of it.

``origin_with_mirror(workdir)`` starts, on loopback:

* the origin: a real ``docker-registry`` that tests push to;
* optionally ``tests.support.throttle`` in front of it (``rate_bytes_per_second``), the origin's
  link: every answer the origin sends, to whomever, shares that bandwidth;
* the counting proxy (``tests.support.registry_proxy``) in front of that: the origin's address as
  nodes know it. Image references name ``front`` (see ``OriginMirror.ref``), so each blob byte the
  origin serves, to a node or to the cache, is counted per digest and per client;
* the mirror: a second ``docker-registry`` in pull-through cache mode (``proxy.remoteurl``) of the
  front, as a site would run next to its nodes, or with ``mirror_binary`` another build of
  Distribution (``hack/distribution.sh`` builds v3). A node's containerd uses it for the origin's
  host with ``RunningContainerd.trust_registry(front, mirror=mirror.host)``.

``MISS_TRANSFERS`` is what one miss of the cache costs the origin with Debian's ``docker-registry``
(2.8.2), measured in ``test_registry_mirror``: the blob streamed to the node, and again to store it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.oci import PushedImage
from tests.support.registry import BINARY, RunningRegistry, start_registry
from tests.support.registry_proxy import CountingProxy, counting_proxy
from tests.support.throttle import throttled_proxy

# One miss of Debian's docker-registry (2.8.2): a transfer streamed to the node, another to store.
MISS_TRANSFERS = 2


@dataclass(frozen=True)
class OriginMirror:
    """The origin registry, the counting front the nodes name, and the pull-through cache."""

    origin: RunningRegistry
    front: CountingProxy
    mirror: RunningRegistry
    rate_bytes_per_second: float | None

    @property
    def host(self) -> str:
        """The origin's address as nodes name it (the counting front)."""
        return self.front.host

    def ref(self, image: PushedImage) -> str:
        """``image`` (pushed to the origin) pinned by digest, named through the front."""
        return f"{self.front.host}/{image.repository}@{image.digest}"

    def stored_bytes(self, digest: str) -> int:
        """Size of blob ``digest`` in the origin's own storage (not through the counting front)."""
        hexdigest = digest.removeprefix("sha256:")
        blob = self.origin.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
        return blob.stat().st_size

    def origin_bytes(self, digest: str) -> int:
        """Body bytes of blob ``digest`` the origin served so far, to anyone."""
        return self.front.counter.blob(digest).bytes_sent


@contextmanager
def origin_with_mirror(
    workdir: Path, *, rate_bytes_per_second: float | None = None, mirror_binary: str = BINARY
) -> Iterator[OriginMirror]:
    """Run origin, optional throttle, counting front and mirror under ``workdir`` inside the block."""
    with ExitStack() as stack:
        origin = stack.enter_context(start_registry(workdir / "origin"))
        upstream = origin.host
        if rate_bytes_per_second is not None:
            upstream = stack.enter_context(throttled_proxy(origin.host, rate_bytes_per_second)).host
        front = stack.enter_context(counting_proxy(upstream))
        mirror = stack.enter_context(
            start_registry(workdir / "mirror", proxy_remote_url=f"http://{front.host}", binary=mirror_binary)
        )
        yield OriginMirror(origin, front, mirror, rate_bytes_per_second)
