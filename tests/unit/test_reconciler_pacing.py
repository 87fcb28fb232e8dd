"""The reconcile loop with fleet pacing: two simulated nodes sharing in-memory Leases and warm digests."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from prefetcher.agent.pacer import Pacer, pacing_policy
from prefetcher.agent.reconciler import Reconciler, _next_pass_seconds
from prefetcher.core.model import SkipReason
from prefetcher.core.state import AgentState
from prefetcher.metrics import Metrics
from prefetcher.testing.fleet import FakeFleetWarmth, FakeSlotLeases
from tests.support.reconciler_world import MIB, World, ref


class Fleet:
    """Nodes that share one namespace of Leases and publish their warm digests to each other."""

    def __init__(self, config: str) -> None:
        self.leases, self.warmth, self.config = FakeSlotLeases(), FakeFleetWarmth(), config

    def node(self, name: str, *models: str) -> tuple[World, Reconciler]:
        world = World({"big": 100 * MIB, "small": 10 * MIB}, config=self.config)
        world.want(*models)
        metrics = Metrics(CollectorRegistry())
        pacer = Pacer(
            leases=self.leases,
            warmth=self.warmth.for_node(name),
            node=name,
            clock=world.clock,
            events=world.events,
            metrics=metrics,
            policy=lambda: pacing_policy(world.config.fleet),
        )
        agent = Reconciler(
            runtime=world.runtime,
            registry=world.registry,
            source=world.source,
            disk=world.disk,
            events=world.events,
            metrics=metrics,
            clock=world.clock,
            config=lambda: world.config,
            state=AgentState(),
            save_state=world.saved.append,
            draw=lambda: 0.5,
            pacer=pacer,
        )
        return world, agent


def pulled(world: World) -> list[str]:
    return [p.ref for p in world.runtime.pulls]


def test_the_second_node_waits_for_the_seed_and_says_why_then_pulls_once_it_is_warm() -> None:
    fleet = Fleet("fleet: {seedPulls: 1, maxConcurrentPulls: 5}")
    (a, agent_a), (b, agent_b) = fleet.node("a", "big"), fleet.node("b", "big")
    a.runtime.held.add(ref("big"))
    agent_a.reconcile(a.config)
    assert pulled(a) == [ref("big")]
    assert [s.holder for s in fleet.leases.leases.values()] == ["a"]

    planned = agent_b.dry_run()
    (skip,) = planned.skips
    assert (skip.ref, skip.reason) == (ref("big"), SkipReason.PACED)
    assert "fleet.seedPulls" in skip.message
    report = agent_b.reconcile(b.config)
    assert not pulled(b)
    assert [s.reason for s in report.plan.skips] == [SkipReason.PACED]
    assert agent_b.summary()["pacing"] == {"waiting": {"seed": 1}, "holding": 0}

    a.runtime.finish(a.runtime.pulls[0])
    assert agent_a.run(threading.Event(), once=True) == 0  # the success is recorded, published, released
    assert fleet.warmth.published == {"a": frozenset({ref("big").rpartition("@")[2]})}
    assert not fleet.leases.leases
    assert agent_b.run(threading.Event(), once=True) == 0
    assert pulled(b) == [ref("big")]


def test_a_waiting_model_does_not_block_a_model_only_this_node_wants() -> None:
    fleet = Fleet("fleet: {seedPulls: 1}")
    (a, agent_a), (b, agent_b) = fleet.node("a", "big"), fleet.node("b", "big", "small")
    a.runtime.held.add(ref("big"))
    agent_a.reconcile(a.config)
    report = agent_b.reconcile(b.config)
    assert pulled(b) == [ref("small")]
    assert [(s.ref, s.reason) for s in report.plan.skips] == [(ref("big"), SkipReason.PACED)]


def test_pacing_off_pulls_on_every_node_at_once_and_touches_no_lease() -> None:
    fleet = Fleet("fleet: {pacing: false}")
    (a, agent_a), (b, agent_b) = fleet.node("a", "big"), fleet.node("b", "big")
    a.runtime.held.add(ref("big"))
    agent_a.reconcile(a.config)
    agent_b.reconcile(b.config)
    assert pulled(a) == pulled(b) == [ref("big")]
    assert not fleet.leases.leases and not fleet.warmth.published
    assert "pacing" not in agent_b.summary()


class Contested(FakeSlotLeases):
    """Leases where node ``a`` takes every slot just before ``b`` does: ``b`` read it free and loses."""

    def take(self, name: str, *, holder: str, duration_seconds: float, version: str | None) -> str | None:
        if holder == "b" and name not in self.leases:
            super().take(name, holder="a", duration_seconds=duration_seconds, version=None)
        return super().take(name, holder=holder, duration_seconds=duration_seconds, version=version)


def test_a_node_that_loses_the_race_for_a_turn_reports_it_paced_and_looks_again_soon() -> None:
    fleet = Fleet("resyncSeconds: 300\nfleet: {seedPulls: 1, pollSeconds: 2}")
    fleet.leases = Contested()
    (b, agent_b) = fleet.node("b", "big")
    report = agent_b.reconcile(b.config)
    assert not pulled(b)
    (skip,) = report.plan.skips
    assert (skip.ref, skip.reason) == (ref("big"), SkipReason.PACED)
    assert "another node took the turn first" in skip.message
    assert not report.plan.pulls
    assert agent_b.summary()["pacing"] == {"waiting": {"seed": 1}, "holding": 0}
    # The next look comes after fleet.pollSeconds, not after a whole resync period.
    assert _next_pass_seconds(b.config, report.plan) == 2
