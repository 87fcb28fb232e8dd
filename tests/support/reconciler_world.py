"""Test support: a node of in-memory fakes (disk, runtime, registry, source) for reconcile-loop tests."""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from prefetcher.agent.reconciler import Reconciler
from prefetcher.config import Config, load_config
from prefetcher.core.model import ModelRequest
from prefetcher.core.refs import parse_reference
from prefetcher.core.state import AgentState
from prefetcher.metrics import Metrics
from prefetcher.ports import ResolvedImage
from prefetcher.testing.fakes import (
    FakeClock,
    FakeDisk,
    FakeEvents,
    FakePullSecrets,
    FakeRegistry,
    FakeRuntime,
    FakeSource,
)
from tests.support.planner_inputs import digest

MIB = 1024**2
HOST = "registry.test:5000"


def ref(name: str) -> str:
    return f"{HOST}/models/{name}@{digest(name)}"


class World:
    """A node: disk, runtime, registry, one model source and the saved state."""

    def __init__(self, sizes: dict[str, int], *, total: int = 1000 * MIB, config: str = "") -> None:
        self.disk = FakeDisk(total_bytes=total)
        self.runtime = FakeRuntime(self.disk, sizes={ref(n): 2 * s for n, s in sizes.items()})
        self.registry = FakeRegistry(
            {ref(n): ResolvedImage(parse_reference(ref(n)), s) for n, s in sizes.items()}
        )
        self.source = FakeSource()
        self.events = FakeEvents()
        self.clock = FakeClock()
        self.saved: list[AgentState] = []
        self.config: Config = load_config(config or "eviction: {graceSeconds: 0}")
        self.pull_secrets: FakePullSecrets | None = None

    def want(self, *names: str, priority: int = 0) -> None:
        self.source.models = [ModelRequest(f"oci://{ref(n)}", priority, f"test {n}") for n in names]

    def agent(
        self,
        state: AgentState | None = None,
        *,
        wake: threading.Event | None = None,
        after_pass: Callable[..., None] | None = None,
        config: Callable[[], Config] | None = None,
    ) -> Reconciler:
        return Reconciler(
            runtime=self.runtime,
            registry=self.registry,
            source=self.source,
            disk=self.disk,
            events=self.events,
            metrics=Metrics(CollectorRegistry()),
            clock=self.clock,
            config=config or (lambda: self.config),
            state=state or AgentState(),
            save_state=self.saved.append,
            draw=lambda: 0.5,
            pull_secrets=self.pull_secrets,
            wake=wake,
            after_pass=after_pass,
        )
