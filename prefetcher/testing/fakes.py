"""Fakes of the ports: small, honest in-memory stand-ins used only by unit tests of pure logic.

``FakeRuntime`` and ``FakeRegistry`` pass the same contract tests as the CRI adapter on a real
containerd and the registry client on a real registry (tests/integration/test_port_contracts.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from prefetcher.core.model import CachedImage, DiskState, ModelRequest
from prefetcher.core.refs import ImageRef
from prefetcher.errors import (
    CredentialsError,
    PullFailedError,
    PullFailure,
    RegistryError,
    RuntimeUnavailableError,
)
from prefetcher.ports import Credentials, ResolvedImage


@dataclass
class FakeClock:
    """A clock that moves only when told."""

    wall: float = 1_000_000.0
    mono: float = 0.0

    def now(self) -> float:
        """Wall time."""
        return self.wall

    def monotonic(self) -> float:
        """Monotonic time."""
        return self.mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self.wall += seconds
        self.mono += seconds


@dataclass
class FakeDisk:
    """A filesystem whose usage the fake runtime changes as it pulls and removes."""

    total_bytes: int
    used_bytes: int = 0

    def usage(self) -> DiskState:
        """Current usage."""
        return DiskState(self.total_bytes, self.used_bytes)


@dataclass
class FakePull:
    """A pull that finishes when the runtime says so."""

    ref: str
    outcome: str | Exception | None = None
    cancelled: bool = False
    credentials: Credentials | None = None

    def done(self) -> bool:
        """Finished, failed or cancelled."""
        return self.outcome is not None or self.cancelled

    def result(self, timeout_seconds: float | None = None) -> str:
        """The image id, or the failure; ``TimeoutError`` while the pull is held (it never waits)."""
        if self.cancelled:
            raise PullFailedError(f"pull of {self.ref} cancelled", reason=PullFailure.CANCELLED)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        if self.outcome is None:
            raise TimeoutError(f"pull of {self.ref} still running")
        return self.outcome

    def cancel(self) -> None:
        """Abort."""
        self.cancelled = True


def image_id(ref: str) -> str:
    """The fake runtime's image id for a digest reference (``tags`` lead a tag to one)."""
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


@dataclass
class FakeRuntime:
    """An image store: pulls finish at once unless ``held``; each costs ``sizes[ref]`` disk bytes.

    ``sizes`` holds the digest references the registry has, ``tags`` maps a tag reference to one
    of them; a pull of anything else fails ``not_found``. While ``down`` every call raises
    ``RuntimeUnavailableError``, as the CRI adapter does when the socket is missing.
    """

    disk: FakeDisk
    sizes: dict[str, int] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    images: dict[str, CachedImage] = field(default_factory=dict)
    in_use: set[str] = field(default_factory=set)
    failures: dict[str, Exception] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    down: bool = False
    pulls: list[FakePull] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def _check(self) -> None:
        if self.down:
            raise RuntimeUnavailableError("fake runtime is down")

    def list_images(self) -> list[CachedImage]:
        """Images held."""
        self._check()
        return list(self.images.values())

    def image_status(self, ref: str) -> CachedImage | None:
        """The image known by ``ref`` (a name or an image id)."""
        self._check()
        return self.images.get(ref) or next((i for i in self.images.values() if ref in i.refs), None)

    def start_pull(self, ref: str, *, credentials: Credentials | None, timeout_seconds: float) -> FakePull:
        """Pull, finishing at once unless held."""
        self._check()
        pull = FakePull(ref, credentials=credentials)
        self.pulls.append(pull)
        if ref not in self.held:
            self.finish(pull)
        return pull

    def finish(self, pull: FakePull) -> None:
        """Complete ``pull`` (or fail it as configured, or as not found)."""
        digest_ref = self.tags.get(pull.ref, pull.ref)
        if pull.ref in self.failures:
            pull.outcome = self.failures[pull.ref]
            return
        if digest_ref not in self.sizes:
            failure = PullFailure.NOT_FOUND
            pull.outcome = PullFailedError(f"pull of {pull.ref} failed ({failure})", reason=failure)
            return
        new_id = image_id(digest_ref)
        old = self.images.get(new_id)
        tags = (pull.ref,) if pull.ref != digest_ref else ()
        if old is None:
            self.images[new_id] = CachedImage(new_id, (digest_ref,), tags, self.sizes[digest_ref])
            self.disk.used_bytes += self.sizes[digest_ref]
        else:
            self.images[new_id] = replace(old, repo_tags=tuple(dict.fromkeys(old.repo_tags + tags)))
        pull.outcome = new_id

    def remove_image(self, image_id: str) -> None:
        """Remove and free its bytes; an absent image is no error, as with CRI ``RemoveImage``."""
        self._check()
        image = self.images.pop(image_id, None)
        if image is None:
            return
        self.disk.used_bytes -= self.sizes.get(next(iter(image.repo_digests), ""), 0)
        self.removed.append(image_id)

    def images_in_use(self) -> frozenset[str]:
        """Ids and references of images used by containers."""
        self._check()
        return frozenset(self.in_use)


@dataclass
class FakeRegistry:
    """Resolves references from a table (keyed by ``ImageRef.canonical()``), as a registry would.

    ``errors`` maps a reference to the error to raise; a ``protected`` reference needs its
    credentials; ``credentials`` are the configured ones per registry host, used when a call
    passes none; while ``down`` nothing answers.
    """

    table: dict[str, ResolvedImage] = field(default_factory=dict)
    errors: dict[str, RegistryError] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
    protected: dict[str, Credentials] = field(default_factory=dict)
    credentials: dict[str, Credentials] = field(default_factory=dict)
    down: bool = False

    def resolve(self, ref: ImageRef, *, credentials: Credentials | None = None) -> ResolvedImage:
        """Look the reference up; ``credentials`` replace the configured ones for this call."""
        key = ref.canonical()
        self.lookups.append(key)
        if self.down:
            raise RegistryError(f"registry {ref.registry}: cannot connect (fake registry is down)")
        if key in self.errors:
            raise self.errors[key]
        creds = credentials if credentials is not None else self.credentials_for(ref.registry)
        if key in self.protected and creds != self.protected[key]:
            raise RegistryError(f"{key}: HTTP 401 unauthorized", status=401)
        if key not in self.table:
            raise RegistryError(f"{key}: manifest unknown", status=404)
        return self.table[key]

    def credentials_for(self, registry: str) -> Credentials | None:
        """Credentials configured for a registry host, if any."""
        return self.credentials.get(registry)


@dataclass
class FakePullSecrets:
    """Pull secrets per model source; ``errors`` maps a source to the error reading its secrets raises."""

    keyring: dict[str, Credentials] = field(default_factory=dict)
    errors: dict[str, CredentialsError] = field(default_factory=dict)

    def credentials_for(self, registry: str, sources: tuple[str, ...]) -> Credentials | None:
        """The first source's credentials, else the first source's error, else None."""
        found = [self.keyring[s] for s in sources if s in self.keyring]
        if found:
            return found[0]
        problems = [self.errors[s] for s in sources if s in self.errors]
        if problems:
            raise problems[0]
        return None


@dataclass
class FakeEvents:
    """Collects events."""

    events: list[tuple[tuple[str, ...], bool, str, str]] = field(default_factory=list)

    def emit(self, sources: tuple[str, ...], *, warning: bool, reason: str, message: str) -> None:
        """Record the event."""
        self.events.append((sources, warning, reason, message))

    def reasons(self) -> list[str]:
        """Reasons in order."""
        return [e[2] for e in self.events]


@dataclass
class FakeSource:
    """A model source whose requests a test sets."""

    models: list[ModelRequest] = field(default_factory=list)

    def requests(self) -> list[ModelRequest]:
        """The requests now."""
        return list(self.models)
