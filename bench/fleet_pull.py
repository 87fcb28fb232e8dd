"""Many nodes, one registry: origin bytes and time to all-warm when N nodes want one 1 GiB model.

N real kubelet nodes of the test cluster (containerd on a loop-mounted ext4 each), an agent
process per node (``tests.support.fleet``), the origin registry behind ``tests.support.throttle``
(answers capped at ``--rate-mb`` MB/s in all: loopback would otherwise make every pull a memory
copy) and the counting front (bytes per blob), and Distribution's pull-through cache as the
mirror, on loopback and unthrottled, as a cache beside the nodes would be (``tests.support.mirror``).

Per mode, a model of its own (random, incompressible, built here; same size, another seed), so no
registry, cache or node holds it; every node is told to want it at the same moment (the models
file all agents read) and the clock runs until the last node's runtime has it:

* ``single``: one node, direct: the baseline, a single node's pull time in this run;
* ``a``: all nodes at once, direct, no pacing;
* ``a-mirror``: all nodes at once through the cold cache, no pacing;
* ``b``: all nodes, direct, paced (``fleet``: ``seedPulls`` 1, ``maxConcurrentPulls`` N);
* ``c``: all nodes through the cold cache, paced the same;
* ``c-v3``: the same through a cold Distribution 3 cache (``hack/distribution.sh`` builds it),
  which stores the blob it streams instead of fetching it a second time.

The cache in the other modes is Debian's ``docker-registry`` (Distribution 2.8.2).

Printed per mode: origin bytes of the model's layer / layer size, time to all-warm and its ratio
to ``single``. Then the parameters ``bench/fleet_sim.py`` takes: a node's own pull throughput (one
node pulling the model from the warm cache, unthrottled), the origin's measured bandwidth, and the
cache's aggregate bandwidth to the nodes after the seed pull in mode ``c-v3`` (else ``c``). Agents
follow the InferenceServices of a namespace (KServe's CRD is installed; ``hack/kserve-assets.sh``)
besides the models file, which is what gives them the API access pacing needs.

    .venv/bin/python bench/fleet_pull.py [--nodes 4] [--size-mib 1024] [--rate-mb 50] \\
        [--modes single,a,a-mirror,b,c,c-v3] [--json measured.json]

``--json`` writes the parameters and each mode's all-warm time and origin bytes in the form
``bench/fleet_sim.py --measured`` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.cluster import start_cluster  # noqa: E402
from tests.support.fleet import UNPACED, Fleet, fleet_agents, paced, warm_seconds  # noqa: E402
from tests.support.kserve import install_isvc_crd  # noqa: E402
from tests.support.kubelet import KubeletOptions  # noqa: E402
from tests.support.mirror import origin_with_mirror  # noqa: E402
from tests.support.node import start_node  # noqa: E402
from tests.support.oci import PushedImage, push_modelcar, push_sandbox_image  # noqa: E402
from tests.support.pods import CriPods  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

MIB = 1024**2
MODES = ("single", "a", "a-mirror", "b", "c", "c-v3")
PACED = {"b", "c", "c-v3"}
MIRROR_OF = {"a-mirror": "2.8", "c": "2.8", "c-v3": "3"}
# Room for a 1 GiB model twice over (content plus unpacked snapshot) while the last one is collected.
IMAGE_FS_MB = 5120
WARM_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class Outcome:
    """One mode: origin layer bytes, per-node seconds to warm, the layer's size."""

    mode: str
    origin_bytes: int
    warm: dict[str, float]
    layer_bytes: int
    origin_seconds: float

    @property
    def all_warm(self) -> float:
        return max(self.warm.values())


def run_mode(
    fleet: Fleet, mode: str, image: PushedImage, workdir: Path, *, mirrors: dict[str, str], namespace: str
) -> Outcome:
    nodes = fleet.nodes[:1] if mode == "single" else fleet.nodes
    fleet.route(mirrors[MIRROR_OF[mode]] if mode in MIRROR_OF else None)
    ref = fleet.registries.ref(image)
    settings = paced(len(nodes)) if mode in PACED else UNPACED
    with fleet_agents(fleet, nodes, workdir / mode, namespace=namespace, settings=settings) as agents:
        since = agents.want(f"oci://{ref}")
        warm = warm_seconds(nodes, ref, since=since, agents=agents, timeout_seconds=WARM_TIMEOUT_SECONDS)
    traffic = fleet.registries.front.counter.blob(image.layer_digests[-1])
    fleet.forget(ref)
    layer_bytes = fleet.registries.stored_bytes(image.layer_digests[-1])
    return Outcome(mode, traffic.bytes_sent, warm, layer_bytes, traffic.last_byte_at - traffic.first_byte_at)


def node_pull_seconds(fleet: Fleet, image: PushedImage, workdir: Path, mirror: str) -> float:
    """One node pulling ``image`` alone from the warm cache (no agent): the node's own speed."""
    fleet.route(mirror)
    ref = fleet.registries.ref(image)
    with CriPods(fleet.nodes[0].endpoint, log_root=workdir / "node-pull") as pods:
        start = time.monotonic()
        pods.ensure_image(ref)
        seconds = time.monotonic() - start
    fleet.forget(ref)
    return seconds


def report(outcomes: list[Outcome]) -> None:
    single = next((o.all_warm for o in outcomes if o.mode == "single"), None)
    print("\nmode       nodes  origin/model  all-warm   vs single  per node (s)")
    for o in outcomes:
        ratio = f"{o.all_warm / single:8.2f}x" if single else "        -"
        per_node = ", ".join(f"{s:.1f}" for s in sorted(o.warm.values()))
        print(
            f"{o.mode:9s}  {len(o.warm):5d}  {o.origin_bytes / o.layer_bytes:11.2f}x  "
            f"{o.all_warm:7.1f}s  {ratio}  {per_node}"
        )


def sim_parameters(outcomes: list[Outcome], node_seconds: float | None, nodes: int) -> dict[str, Any]:
    """What ``bench/fleet_sim.py --measured`` reads: the measured rates and what each mode saw."""
    by_mode = {o.mode: o for o in outcomes}
    layer = outcomes[0].layer_bytes
    doc: dict[str, Any] = {"nodes": nodes, "modelBytes": layer, "seedPulls": 1, "maxConcurrentPulls": nodes}
    if node_seconds:
        doc["nodeMBs"] = round(layer / node_seconds / 1e6, 1)
    direct = by_mode.get("a")
    if direct is not None and direct.origin_seconds > 0:
        doc["originMBs"] = round(direct.origin_bytes / direct.origin_seconds / 1e6, 1)
    measured = {
        o.mode: {"allWarmSeconds": round(o.all_warm, 1), "originEgressBytes": o.origin_bytes}
        for o in outcomes
    }
    paced = by_mode.get("c-v3") or by_mode.get("c")
    if paced is not None:
        doc["mirrorFetches"] = round(paced.origin_bytes / layer)
        warm = sorted(paced.warm.values())
        if warm[-1] > warm[0]:
            doc["mirrorMBs"] = round((len(warm) - 1) * layer / (warm[-1] - warm[0]) / 1e6, 1)
        measured["c"] = measured[paced.mode]
    doc["measured"] = measured
    return doc


def print_parameters(doc: dict[str, Any], rate_mb: float) -> None:
    print("\nparameters for bench/fleet_sim.py:")
    notes = {
        "nodeMBs": ("--node-mb-s", "one node alone from the warm cache"),
        "originMBs": ("--origin-mb-s", f"measured in mode a; throttle set to {rate_mb:g}"),
        "mirrorMBs": ("--mirror-mb-s", "the cache to the nodes after the seed, c-v3 else c"),
        "mirrorFetches": ("--mirror-fetches", "origin transfers per cache miss, c-v3 else c"),
    }
    for key, (flag, note) in notes.items():
        if key in doc:
            print(f"  {flag} {doc[key]:g}   ({note})")


def distribution3_mirror(front: str, workdir: Path) -> Any:
    """A pull-through cache of ``front`` run by Distribution 3 (built by ``hack/distribution.sh``)."""
    script = REPO / "hack" / "distribution.sh"
    directory = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True).stdout
    binary = str(Path(directory.strip()) / "registry")
    return start_registry(workdir / "mirror-v3", proxy_remote_url=f"http://{front}", binary=binary)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rate-mb", type=float, default=50.0, help="origin bandwidth, MB/s (10^6 bytes)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", type=Path, help="write the parameters and figures for fleet_sim.py here")
    opts = parser.parse_args()
    modes = [m for m in opts.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    outcomes: list[Outcome] = []
    node_seconds = None
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        registries = stack.enter_context(
            origin_with_mirror(workdir / "registries", rate_bytes_per_second=opts.rate_mb * 1e6)
        )
        mirrors = {"2.8": registries.mirror.host}
        if "c-v3" in modes:
            mirrors["3"] = stack.enter_context(distribution3_mirror(registries.host, workdir)).host
        cluster = stack.enter_context(start_cluster(workdir / "cluster"))
        install_isvc_crd(cluster.apiserver)
        namespace = "bench-fleet"
        cluster.create_namespace(namespace)
        sandbox = push_sandbox_image(registries.origin)
        nodes = tuple(
            stack.enter_context(
                start_node(
                    cluster,
                    workdir / f"n{i}",
                    registry_host=registries.origin.host,
                    sandbox_image=sandbox.tag_ref,
                    image_fs_mb=IMAGE_FS_MB,
                    options=KubeletOptions(),
                )
            )
            for i in range(opts.nodes)
        )
        fleet = Fleet(nodes, registries)
        for i, mode in enumerate(modes):
            image = push_modelcar(
                registries.origin, f"bench/fleet-{mode}", model_size_bytes=opts.size_mib * MIB, seed=1200 + i
            )
            print(f"mode {mode}: {image.ref}", flush=True)
            outcomes.append(run_mode(fleet, mode, image, workdir, mirrors=mirrors, namespace=namespace))
            print(f"  all warm after {outcomes[-1].all_warm:.1f}s", flush=True)
            if mode in MIRROR_OF and node_seconds is None:
                node_seconds = node_pull_seconds(fleet, image, workdir, mirrors[MIRROR_OF[mode]])
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    report(outcomes)
    doc = sim_parameters(outcomes, node_seconds, opts.nodes)
    print_parameters(doc, opts.rate_mb)
    if opts.json:
        opts.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
