"""Test support: one model wanted on every node of a test cluster, an agent per node, timed to all-warm.

A ``Fleet`` is real kubelet nodes (``tests.support.node``) and the origin registry with its
counting front and pull-through cache (``tests.support.mirror``). ``Fleet.route`` writes each
node's ``hosts.toml`` for the origin's host: straight to the origin, or through a mirror first.

``fleet_agents`` runs ``prefetcher agent`` on each node as a process of its own (the node's CRI
socket and image filesystem, the node's name, the cluster admin's kubeconfig, ``resyncSeconds`` 1)
following the InferenceServices of one namespace (none; they need KServe's CRD) and a models file
that starts empty, and waits until every agent has finished a pass. Following InferenceServices is
what gives an agent the API access pull pacing needs; its Leases go to the ``default`` namespace
(no ``$POD_NAMESPACE`` outside a pod). Then
``FleetAgents.want(uri)`` writes the model into the models file (a rename, so each agent reads it
whole at its next pass): every node wants the same model at the same moment, as when an
InferenceService appears for a node pool. ``warm_seconds`` polls each node's runtime (CRI
``ImageStatus``) and returns, per node, when the model was there.

Agents run as processes here, so that a test or benchmark sets each one's ``fleet:`` settings and
the moment every node wants the model; ``tests/integration/test_fleet_deploy.py`` runs the same
fleet with the agent installed from ``deploy/agent`` on each node instead. ``UNPACED`` and
``paced(n)`` are the ``fleet:`` settings compared; they and any other settings are merged into
every agent's configuration.

``fleet_nodes`` starts the nodes and the registries; ``slot_holder`` reads which node holds a
model's first pacing slot; ``cluster_status`` runs ``prefetcher status``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefetcher.adapters.cri import CriImageRuntime
from prefetcher.adapters.leases import LABEL
from prefetcher.core.pacing import digest_lease
from tests.support.agent_process import AgentProcess, agent_config, running_agent
from tests.support.apiserver import ApiServer
from tests.support.cluster import Cluster
from tests.support.kubelet import KubeletOptions
from tests.support.mirror import OriginMirror, origin_with_mirror
from tests.support.node import NodeCluster, start_node
from tests.support.oci import push_sandbox_image
from tests.support.polling import eventually
from tests.support.registry import RunningRegistry

RESYNC_SECONDS = 1.0
AGENT_START_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.1
UNPACED: dict[str, Any] = {"fleet": {"pacing": False}}


def paced(nodes: int) -> dict[str, Any]:
    """Pacing with one seed, then every node at once; a waiting node looks again every second."""
    return {"fleet": {"pacing": True, "seedPulls": 1, "maxConcurrentPulls": nodes, "pollSeconds": 1}}


@dataclass(frozen=True)
class Fleet:
    """The nodes and the registries they pull from."""

    nodes: tuple[NodeCluster, ...]
    registries: OriginMirror

    def route(self, mirror: str | None) -> None:
        """Each node's containerd pulls the origin's images directly, or through ``mirror`` first."""
        for node in self.nodes:
            node.containerd.trust_registry(self.registries.host, mirror=mirror)

    def forget(self, ref: str) -> None:
        """Remove ``ref`` from every node's runtime (a node that never had it is left alone)."""
        for node in self.nodes:
            with CriImageRuntime(node.endpoint) as runtime:
                image = runtime.image_status(ref)
                if image is not None:
                    runtime.remove_image(image.id)


@contextmanager
def fleet_nodes(
    cluster: Cluster,
    registry: RunningRegistry,
    workdir: Path,
    *,
    count: int,
    image_fs_mb: int,
    rate_bytes_per_second: float | None,
) -> Iterator[Fleet]:
    """``count`` Ready nodes of ``cluster`` (pulling from ``registry``) and the registries, until exit."""
    sandbox = push_sandbox_image(registry)
    with ExitStack() as stack:
        nodes = tuple(
            stack.enter_context(
                start_node(
                    cluster,
                    workdir / f"n{i}",
                    registry_host=registry.host,
                    sandbox_image=sandbox.tag_ref,
                    image_fs_mb=image_fs_mb,
                    options=KubeletOptions(),
                )
            )
            for i in range(count)
        )
        registries = origin_with_mirror(workdir / "registries", rate_bytes_per_second=rate_bytes_per_second)
        yield Fleet(nodes, stack.enter_context(registries))


def slot_holder(apiserver: ApiServer, namespace: str, digest: str) -> str:
    """The holder of the first pacing slot of the model ``digest`` (Leases in ``namespace``), or ''."""
    name = digest_lease(digest, 0)
    leases = apiserver.kubectl("get", "leases", "-n", namespace, "-l", f"{LABEL}=slot", "-o", "json")
    found = [i for i in json.loads(leases)["items"] if i["metadata"]["name"] == name]
    return str(found[0]["spec"].get("holderIdentity") or "") if found else ""


def cluster_status(kubeconfig: Path, *args: str) -> str:
    """``prefetcher status --kubeconfig kubeconfig *args`` run as a command; its output."""
    command = [str(Path(sys.executable).parent / "prefetcher"), "status", "--kubeconfig", str(kubeconfig)]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class FleetAgents:
    """Running agents sharing one models file."""

    agents: list[AgentProcess]
    models_file: Path

    def want(self, uri: str) -> float:
        """Put ``uri`` in the models file; the ``time.monotonic()`` of the change."""
        staged = self.models_file.with_suffix(".new")
        staged.write_text(json.dumps({"models": [{"uri": uri}]}))
        staged.replace(self.models_file)
        return time.monotonic()

    def logs(self) -> str:
        """Every agent's log, for failure messages."""
        return "\n".join(f"--- agent {i} ---\n{a.log()[-3000:]}" for i, a in enumerate(self.agents))


def _passed(agent: AgentProcess) -> bool:
    return agent.metric("prefetcher_last_reconcile_timestamp_seconds") > 0


@contextmanager
def fleet_agents(
    fleet: Fleet,
    nodes: Sequence[NodeCluster],
    workdir: Path,
    *,
    namespace: str,
    settings: Mapping[str, Any],
) -> Iterator[FleetAgents]:
    """One agent per node of ``nodes``, idle on an empty models file, until the block exits."""
    workdir.mkdir(parents=True, exist_ok=True)
    models = workdir / "models.yaml"
    models.write_text(json.dumps({"models": []}))
    with ExitStack() as stack:
        agents = []
        for node in nodes:
            home = workdir / node.node_name
            home.mkdir()
            config = agent_config(
                node.containerd,
                [fleet.registries.host],
                home,
                resyncSeconds=RESYNC_SECONDS,
                kubernetes={"namespaces": [namespace]},
                **settings,
            )
            (home / "agent.yaml").write_text(json.dumps(config))
            agent = running_agent(
                home / "agent.yaml",
                node=node.node_name,
                kubeconfig=node.apiserver.kubeconfig,
                log_file=home / "agent.log",
                extra=("--models", str(models), "--inferenceservices"),
            )
            agents.append(stack.enter_context(agent))
        for agent in agents:
            agent.wait(
                lambda a=agent: _passed(a), what="a first pass", timeout_seconds=AGENT_START_TIMEOUT_SECONDS
            )
        yield FleetAgents(agents, models)


def warm_seconds(
    nodes: Sequence[NodeCluster],
    ref: str,
    *,
    since: float,
    agents: FleetAgents,
    timeout_seconds: float,
) -> dict[str, float]:
    """Per node name, seconds from ``since`` until ``ref`` was in its runtime; waits for all."""
    seen: dict[str, float] = {}
    with ExitStack() as stack:
        runtimes = [(n.node_name, stack.enter_context(CriImageRuntime(n.endpoint))) for n in nodes]

        def all_warm() -> bool:
            for agent in agents.agents:
                agent.check()
            for name, runtime in runtimes:
                if name not in seen and runtime.image_status(ref) is not None:
                    seen[name] = time.monotonic() - since
            return len(seen) == len(runtimes)

        try:
            eventually(
                all_warm,
                timeout_seconds=timeout_seconds,
                what=f"{ref} on every node",
                interval_seconds=POLL_SECONDS,
            )
        except AssertionError as err:
            raise AssertionError(f"{err}\nwarm: {seen}\n{agents.logs()}") from None
    return seen
