"""In-memory fakes of fleet pacing's ports, shared by several simulated nodes in unit tests.

``FakeSlotLeases`` keeps the API server's guarantees that turn-taking relies on: a create fails
when the Lease exists, an update or delete fails when the version changed. The integration test
``tests/integration/test_pacing_leases.py`` holds the real adapter to the same behaviour.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from prefetcher.errors import KubeError
from prefetcher.ports import LeaseState


@dataclass
class FakeSlotLeases:
    """Leases of one namespace; set ``broken`` to make every call fail as an unreachable server."""

    leases: dict[str, LeaseState] = field(default_factory=dict)
    broken: bool = False
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def list(self) -> dict[str, LeaseState]:
        """Every Lease, by name."""
        self._check()
        return dict(self.leases)

    def take(self, name: str, *, holder: str, duration_seconds: float, version: str | None) -> str | None:
        """Create, or update the given version; None when another writer was first."""
        self._check()
        current = self.leases.get(name)
        if (current is None) != (version is None) or (current is not None and current.version != version):
            return None
        new = LeaseState(name, holder, str(next(self._versions)), duration_seconds)
        self.leases[name] = new
        return new.version

    def release(self, name: str, *, version: str) -> None:
        """Delete the Lease if it still has ``version``."""
        self._check()
        current = self.leases.get(name)
        if current is not None and current.version == version:
            del self.leases[name]

    def _check(self) -> None:
        if self.broken:
            raise KubeError("the API server cannot be reached")


@dataclass
class FakeFleetWarmth:
    """The warm digests of every node (``published``); one view per node via ``for_node``."""

    published: dict[str, frozenset[str]] = field(default_factory=dict)

    def for_node(self, node: str) -> FakeNodeWarmth:
        """The port as the agent on ``node`` sees it."""
        return FakeNodeWarmth(self, node)


@dataclass
class FakeNodeWarmth:
    """One node's view of ``FakeFleetWarmth``."""

    fleet: FakeFleetWarmth
    node: str

    def publish(self, keys: Iterable[str]) -> None:
        """Record the digests warm on this node."""
        self.fleet.published[self.node] = frozenset(keys)

    def elsewhere(self) -> frozenset[str]:
        """The digests warm on any other node."""
        return frozenset(k for n, keys in self.fleet.published.items() if n != self.node for k in keys)
