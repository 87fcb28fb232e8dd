"""Turns model requests into pinned, sized models, asking the registry only when it must.

A model already in the runtime's store needs no registry call; a digest's size never changes, so
it is cached for good; a tag is re-resolved after ``tag_ttl_seconds``. Failures back off per
reference, so a broken registry is not asked on every pass. The registry is asked with the
``Keychain``'s credentials: the workload's pull secrets, else the node's. Requests naming the same
reference are merged first (highest priority, every source), so fifty copies of a failing model
are one lookup and one failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prefetcher.agent.keychain import Keychain
from prefetcher.core.backoff import backoff_skip
from prefetcher.core.model import DesiredModel, ModelRequest, Skip, SkipReason
from prefetcher.core.refs import ImageRef, parse_reference
from prefetcher.errors import InvalidReferenceError, RegistryError
from prefetcher.ports import EventSink, Registry, ResolvedImage

log = logging.getLogger(__name__)
MAX_CACHED = 20_000


@dataclass(frozen=True)
class Resolution:
    """Models ready for the planner, models skipped, and references whose lookup failed now."""

    desired: tuple[DesiredModel, ...]
    skips: tuple[Skip, ...]
    failures: tuple[tuple[str, str, tuple[str, ...]], ...]


class Resolver:
    """Resolves requests with a size cache; see the module docstring."""

    def __init__(
        self,
        *,
        registry: Registry,
        events: EventSink,
        clock: Callable[[], float],
        keychain: Keychain | None = None,
        tag_ttl_seconds: float = 300.0,
    ) -> None:
        self._registry = registry
        self._keychain = keychain or Keychain(node=registry.credentials_for)
        self._events = events
        self._clock = clock
        self._tag_ttl = tag_ttl_seconds
        self._cache: dict[str, tuple[ResolvedImage, float]] = {}

    def resolve_all(
        self,
        requests: Iterable[ModelRequest],
        *,
        cached_refs: frozenset[str],
        tag_policy: str,
        backoff_until: dict[str, float],
    ) -> Resolution:
        """Resolve every request; never raises for one bad model."""
        desired: list[DesiredModel] = []
        skips: list[Skip] = []
        failures: list[tuple[str, str, tuple[str, ...]]] = []
        now = self._clock()
        for request, ref, sources in _merge(requests, skips):
            key = ref.canonical()
            if not ref.pinned and tag_policy == "reject":
                skips.append(
                    Skip(
                        key,
                        SkipReason.TAG_REJECTED,
                        "tag-only reference refused by pull.tagPolicy",
                        sources,
                    )
                )
                continue
            if key in cached_refs and (ref.pinned or tag_policy == "allow"):
                desired.append(DesiredModel(ref, request.priority, 0, sources))
                continue
            waiting = backoff_skip(key, sources, until=backoff_until, now=now)
            if waiting is not None:
                skips.append(waiting)
                continue
            try:
                resolved, fresh = self._lookup(ref, now, request, sources)
            except RegistryError as err:
                skips.append(Skip(key, SkipReason.UNRESOLVED, str(err), sources))
                failures.append((key, str(err), sources))
                continue
            pinned = resolved.ref if tag_policy == "resolve" or ref.pinned else ref
            if fresh and not ref.pinned and tag_policy == "resolve":
                self._warn_tag(request, ref, pinned, sources)
            desired.append(DesiredModel(pinned, request.priority, resolved.size_bytes, sources))
        return Resolution(tuple(desired), tuple(skips), tuple(failures))

    def _lookup(
        self, ref: ImageRef, now: float, request: ModelRequest, sources: tuple[str, ...]
    ) -> tuple[ResolvedImage, bool]:
        """The resolved image, and whether the registry was asked just now."""
        key = ref.canonical()
        hit = self._cache.get(key)
        if hit and (ref.pinned or now - hit[1] < self._tag_ttl):
            return hit[0], False
        keys = self._keychain.keys(ref, sources)
        try:
            resolved = self._registry.resolve(ref, credentials=keys.credentials)
        except RegistryError as err:
            if not keys.problem:
                raise
            raise RegistryError(keys.explain(str(err)), status=err.status) from err
        if keys.problem:
            message = f"{key}: resolved without the workload's pull secrets: {keys.problem}"
            log.warning("pull secrets unavailable: %s", message)
            self._events.emit(sources, warning=True, reason="PullSecretsUnavailable", message=message)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[key] = (resolved, now)
        return resolved, True

    def _warn_tag(
        self, request: ModelRequest, ref: ImageRef, pinned: ImageRef, sources: tuple[str, ...]
    ) -> None:
        message = (
            f"{request.uri} names a tag, which defeats node caching; pulled as {pinned.canonical()}. "
            "Pin the digest in storageUri."
        )
        log.warning("tag resolved: %s", message)
        self._events.emit(sources, warning=True, reason="TagResolved", message=message)


def _merge(
    requests: Iterable[ModelRequest], skips: list[Skip]
) -> list[tuple[ModelRequest, ImageRef, tuple[str, ...]]]:
    """One entry per canonical reference: its highest-priority request and every source, in order.

    A malformed URI is added to ``skips`` here, once per URI.
    """
    best: dict[str, tuple[ModelRequest, ImageRef]] = {}
    sources: dict[str, dict[str, None]] = {}  # an ordered set per reference
    invalid: set[str] = set()
    for request in requests:
        try:
            ref = parse_reference(request.uri)
        except InvalidReferenceError as err:
            if request.uri not in invalid:
                invalid.add(request.uri)
                skips.append(Skip(request.uri, SkipReason.INVALID_REFERENCE, str(err), (request.source,)))
            continue
        key = ref.canonical()
        if key not in best or request.priority > best[key][0].priority:
            best[key] = (request, ref)
        sources.setdefault(key, {})[request.source] = None
    return [(request, ref, tuple(sources[key])) for key, (request, ref) in best.items()]
