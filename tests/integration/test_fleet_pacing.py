"""Fleet pull pacing end to end: agents of several nodes taking turns through real Leases.

A real kube-apiserver, one containerd per node and the test registry; each node is a Node object
and an agent process (``prefetcher agent``) following this test's InferenceServices, running as the
agent's ServiceAccount with the shipped RBAC, its Leases in ``modelcar-prefetcher``. The shared
model is served through a proxy capped at ``RATE`` bytes per second, so a pull lasts long enough,
making progress all along, for the other nodes to be seen waiting behind it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prefetcher.adapters.node_status import ANNOTATION as SUMMARY
from prefetcher.adapters.node_warm import ANNOTATION as WARM
from tests.support.agent_process import AgentProcess, agent_config, running_agent
from tests.support.agent_rbac import node_agent_kubeconfig
from tests.support.apiserver import ApiServer
from tests.support.containerd import ContainerdFactory, RunningContainerd
from tests.support.fleet import slot_holder
from tests.support.kube_objects import apply_isvc, create_node, unique
from tests.support.oci import PushedImage, push_modelcar
from tests.support.registry import RunningRegistry
from tests.support.throttle import throttled_proxy

pytestmark = pytest.mark.integration
MIB = 1024**2
RATE = MIB  # bytes per second through the proxy: a 16 MiB model takes about 16 s
NAMESPACE = "modelcar-prefetcher"


@dataclass
class FleetNode:
    """A Node object, its containerd, the agent configuration written for it and the agent's identity."""

    name: str
    containerd: RunningContainerd
    config: Path
    kubeconfig: Path


@dataclass
class Fleet:
    apiserver: ApiServer
    registry: RunningRegistry
    namespace: str
    proxy_host: str
    workdir: Path
    containerd_factory: ContainerdFactory
    stack: ExitStack

    def node(self, *, labels: dict[str, str] | None = None, **fleet: Any) -> FleetNode:
        name = create_node(self.apiserver, labels=labels)
        containerd = self.containerd_factory(root_size_mb=256)
        containerd.trust_registry(self.proxy_host)
        workdir = self.workdir / name
        workdir.mkdir()
        settings = agent_config(
            containerd,
            [self.registry.host, self.proxy_host],
            workdir,
            resyncSeconds=2,
            kubernetes={"namespaces": [self.namespace]},
            fleet={"seedPulls": 1, "maxConcurrentPulls": 5, "pollSeconds": 1, **fleet},
        )
        config = workdir / "agent.yaml"
        config.write_text(json.dumps(settings))
        # The agent as deployed: a token bound to a Pod on this node, under the node policy.
        return FleetNode(name, containerd, config, node_agent_kubeconfig(self.apiserver, name))

    def agent(self, node: FleetNode) -> AgentProcess:
        log_file = self.workdir / f"{node.name}.log"
        return self.stack.enter_context(
            running_agent(node.config, node=node.name, kubeconfig=node.kubeconfig, log_file=log_file)
        )

    def plan(self, node: FleetNode) -> str:
        command = [sys.executable, "-m", "prefetcher", "plan", "--config", str(node.config)]
        command += ["--node-name", node.name, "--kubeconfig", str(node.kubeconfig)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def holder(self, model: PushedImage) -> str:
        """The node holding the model's first slot, or ''."""
        return slot_holder(self.apiserver, NAMESPACE, model.digest)

    def annotation(self, node: FleetNode, key: str) -> str:
        document = json.loads(self.apiserver.kubectl("get", "node", node.name, "-o", "json"))
        return str(document["metadata"].get("annotations", {}).get(key, ""))


@pytest.fixture
def fleet(
    request: pytest.FixtureRequest,
    apiserver: ApiServer,
    registry: RunningRegistry,
    containerd_factory: ContainerdFactory,
    tmp_path: Path,
) -> Iterator[Fleet]:
    request.getfixturevalue("isvc_crd")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("POD_NAMESPACE", NAMESPACE)  # as the DaemonSet sets it; the agents inherit it
    namespace = unique("ns")
    apiserver.create_namespace(namespace)
    with ExitStack() as stack:
        proxy = stack.enter_context(throttled_proxy(registry.host, RATE))
        yield Fleet(
            apiserver,
            registry,
            namespace,
            proxy.host,
            tmp_path,
            containerd_factory,
            stack,
        )


def shared_model(fleet: Fleet, name: str, seed: int) -> tuple[PushedImage, str]:
    """A 16 MiB model behind the throttling proxy, wanted by every node: its image and reference."""
    model = push_modelcar(fleet.registry, f"models/{name}", model_size_bytes=16 * MIB, seed=seed)
    ref = f"{fleet.proxy_host}/{model.repository}@{model.digest}"
    apply_isvc(fleet.apiserver, fleet.namespace, name, {"model": {"storageUri": f"oci://{ref}"}})
    return model, ref


def has(node: FleetNode, ref: str) -> Callable[[], bool]:
    return lambda: ref in node.containerd.image_refs()


def started(
    fleet: Fleet, model: PushedImage, *nodes: FleetNode
) -> tuple[FleetNode, AgentProcess, FleetNode, AgentProcess]:
    """Start the agents of both nodes together: the one that took the seed slot, then the waiting one."""
    agents = {n.name: fleet.agent(n) for n in nodes}
    holder = next(iter(agents.values())).wait(
        lambda: fleet.holder(model) or None, what="a node holding the seed slot", timeout_seconds=120
    )
    assert holder in agents, f"the seed slot is held by {holder!r}, not by a node of this test"
    (waiter,) = (n for n in nodes if n.name != holder)
    (holding,) = (n for n in nodes if n.name == holder)
    agents[waiter.name].wait(
        lambda: agents[waiter.name].metric("prefetcher_pacing_waiting_models", reason="seed") == 1,
        what="the other node waiting for the seed",
        timeout_seconds=120,
    )
    return holding, agents[holding.name], waiter, agents[waiter.name]


def test_with_one_seed_the_second_node_waits_until_the_first_is_warm(fleet: Fleet) -> None:
    llama, ref = shared_model(fleet, unique("llama"), seed=301)
    pool = unique("solo")
    solo = push_modelcar(fleet.registry, f"models/{pool}", model_size_bytes=MIB, seed=302)
    predictor = {"nodeSelector": {"pool": pool}, "model": {"storageUri": solo.uri}}
    apply_isvc(fleet.apiserver, fleet.namespace, pool, predictor)
    alone = fleet.node(labels={"pool": pool}, leaseDurationSeconds=10)
    nodes = (fleet.node(leaseDurationSeconds=10), alone)
    first, agent_a, second, agent_b = started(fleet, llama, *nodes)

    # The metric is set during the pass, the summary published after it: wait for the summary.
    def waiting_summary() -> dict[str, Any] | None:
        summary: dict[str, Any] = json.loads(fleet.annotation(second, SUMMARY) or "{}")
        return summary if summary.get("pacing", {}).get("waiting") == {"seed": 1} else None

    summary = agent_b.wait(waiting_summary, what="the waiting node's summary")
    assert summary["skipped"]["paced"] == 1
    assert f"skip     {ref}  (paced) waiting for a turn: no node holds it warm yet" in fleet.plan(second)
    assert not has(first, ref)() and not has(second, ref)()
    # The model only one node may run is never held back by the wait.
    agents = {first.name: agent_a, second.name: agent_b}
    agents[alone.name].wait(has(alone, solo.ref), what="the model only one node runs")
    assert f"waiting for a turn to pull {solo.ref}" not in agents[alone.name].log()

    agent_a.wait(has(first, ref), what="the seed pull", timeout_seconds=120)
    agent_b.wait(has(second, ref), what="the second node's pull after the seed", timeout_seconds=120)
    assert llama.digest in fleet.annotation(first, WARM).split(",")
    assert f"waiting for a turn to pull {ref} (seed)" in agent_b.log()
    assert agent_b.metric("prefetcher_pacing_deadline_passed_total") == 0
    assert agent_b.metric("prefetcher_pacing_errors_total", operation="read") == 0


def test_a_killed_holders_lease_expires_and_another_node_proceeds(fleet: Fleet) -> None:
    llama, ref = shared_model(fleet, unique("llama"), seed=303)
    nodes = (fleet.node(leaseDurationSeconds=6), fleet.node(leaseDurationSeconds=6))
    first, agent_a, second, agent_b = started(fleet, llama, *nodes)
    agent_a.process.kill()  # no SIGTERM, no clean-up: the lease is simply no longer renewed
    agent_a.process.wait(timeout=20)
    assert not has(first, ref)(), "the model was pulled before its holder was killed; slow the proxy"
    agent_b.wait(lambda: fleet.holder(llama) == second.name, what="the expired slot taken over")
    agent_b.wait(has(second, ref), what="the pull after the take-over", timeout_seconds=120)
    assert agent_b.metric("prefetcher_pacing_deadline_passed_total") == 0
