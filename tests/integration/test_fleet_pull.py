"""Many nodes, one registry: what the origin serves when every node of a pool wants the same model.

Three real kubelet nodes of the test cluster, an agent on each run as a process
(``tests.support.fleet``), the origin registry behind the counting front, Distribution's
pull-through cache as the nodes' mirror (``tests.support.mirror``). Every node is told to want the
model at the same moment. ``test_fleet_deploy`` runs the paced case with the agent installed from
``deploy/agent`` on each node instead.

* Direct, no pacing: each node's containerd fetches the model's layer itself; the origin serves
  it once per node.
* Through the mirror, no pacing: the mirror is cold, so the first request is a miss (two origin
  transfers with Distribution 2.8.2, see ``test_registry_mirror``) and every other node's request
  arrives while that fetch is in flight and goes to the origin too. The origin holds the layer's
  body until it has seen every request, so the window is surely open and the count does not
  depend on how fast the agents start: N + 1 transfers for N nodes, none by containerd.
* Through the mirror, paced (``fleet.seedPulls`` 1): one node pulls while the others wait for a
  node to hold the model warm; by then the cache has stored it. The origin serves the layer in one
  miss of the cache, whatever N: two transfers with Distribution 2.8.2, none for the other nodes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import DEFAULT_IMAGE_FS_MB, Cluster
from tests.support.fleet import (
    UNPACED,
    Fleet,
    FleetAgents,
    fleet_agents,
    fleet_nodes,
    paced,
    warm_seconds,
)
from tests.support.mirror import MISS_TRANSFERS
from tests.support.oci import PushedImage, push_modelcar
from tests.support.polling import eventually
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration
NODES = 3
MODEL_BYTES = 6 * 1024**2
WARM_TIMEOUT_SECONDS = 180.0
# The origin's link: a pull of the model takes seconds, so every agent sees the others' turns.
ORIGIN_RATE = 4 * 1024**2


@pytest.fixture(scope="module")
def fleet(
    cluster: Cluster,
    registry: RunningRegistry,
    cluster_isvc_crd: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    """Three Ready nodes and the registries, shared by this module's tests (each its own models)."""
    workdir = tmp_path_factory.mktemp("fleet")
    with fleet_nodes(
        cluster,
        registry,
        workdir,
        count=NODES,
        image_fs_mb=DEFAULT_IMAGE_FS_MB,
        rate_bytes_per_second=ORIGIN_RATE,
    ) as fleet:
        yield fleet


@pytest.fixture
def namespace(cluster: Cluster) -> str:
    name = f"fleet-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    return name


def layer_bytes(fleet: Fleet, image: PushedImage) -> int:
    """The model layer's size, from the origin's own storage (not through the counting front)."""
    return fleet.registries.stored_bytes(image.layer_digests[-1])


def warm_everywhere(fleet: Fleet, agents: FleetAgents, image: PushedImage, since: float) -> dict[str, float]:
    """Wait until every node has ``image``; per node, seconds from ``since``."""
    warm = warm_seconds(
        fleet.nodes,
        fleet.registries.ref(image),
        since=since,
        agents=agents,
        timeout_seconds=WARM_TIMEOUT_SECONDS,
    )
    assert sorted(warm) == sorted(n.node_name for n in fleet.nodes)
    return warm


def test_without_pacing_the_origin_serves_the_model_once_per_node_directly_or_through_a_cold_mirror(
    fleet: Fleet, namespace: str, tmp_path: Path
) -> None:
    origin, counter = fleet.registries.origin, fleet.registries.front.counter
    direct = push_modelcar(origin, "models/fleet-direct", model_size_bytes=MODEL_BYTES, seed=1211)
    mirrored = push_modelcar(origin, "models/fleet-mirrored", model_size_bytes=MODEL_BYTES, seed=1212)

    fleet.route(None)
    with fleet_agents(fleet, fleet.nodes, tmp_path, namespace=namespace, settings=UNPACED) as agents:
        warm_everywhere(fleet, agents, direct, agents.want(f"oci://{fleet.registries.ref(direct)}"))
        traffic = counter.blob(direct.layer_digests[-1])
        assert dict(traffic.by_agent) == {"containerd": NODES}, agents.logs()
        assert traffic.bytes_sent == NODES * layer_bytes(fleet, direct)

        fleet.route(fleet.registries.mirror.host)
        layer = mirrored.layer_digests[-1]
        release = counter.hold(layer)
        agents.want(f"oci://{fleet.registries.ref(mirrored)}")
        try:
            eventually(
                lambda: counter.blob(layer).gets >= NODES + 1,
                timeout_seconds=WARM_TIMEOUT_SECONDS,
                what="every node's request for the layer at the origin while the first fetch is held",
            )
        except AssertionError as err:
            raise AssertionError(f"{err}\n{counter.blob(layer)}\n{agents.logs()}") from None
        assert counter.blob(layer).bytes_sent == 0, "the hold let a body through"
        release.set()
        warm_everywhere(fleet, agents, mirrored, 0.0)

    traffic = counter.blob(layer)
    assert dict(traffic.by_agent) == {"go-http-client": NODES + 1}, "containerd bypassed the mirror"
    assert traffic.bytes_sent == (NODES + 1) * layer_bytes(fleet, mirrored)


def test_paced_through_the_mirror_the_origin_serves_the_model_in_one_cache_miss(
    fleet: Fleet, namespace: str, tmp_path: Path
) -> None:
    image = push_modelcar(
        fleet.registries.origin, "models/fleet-paced", model_size_bytes=MODEL_BYTES, seed=1213
    )
    layer, counter = image.layer_digests[-1], fleet.registries.front.counter
    fleet.route(fleet.registries.mirror.host)
    with fleet_agents(fleet, fleet.nodes, tmp_path, namespace=namespace, settings=paced(NODES)) as agents:
        warm = warm_everywhere(fleet, agents, image, agents.want(f"oci://{fleet.registries.ref(image)}"))
        waited = [a for a in agents.agents if "waiting for a turn to pull" in a.log()]
        log = agents.logs()
    assert "fleet pacing:" not in log, "pacing failed open"
    assert len(waited) == NODES - 1, log
    traffic = counter.blob(layer)
    assert dict(traffic.by_agent) == {"go-http-client": MISS_TRANSFERS}, (traffic, warm, log)
    assert traffic.bytes_sent == MISS_TRANSFERS * layer_bytes(fleet, image)
