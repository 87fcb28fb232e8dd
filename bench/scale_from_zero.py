"""Scale-from-zero of a modelcar Deployment through a real kubelet: model prefetched by the agent vs not.

One node of the test cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler; a
kubelet and a containerd whose image store is a loop-mounted ext4 of ``--image-fs-mb`` MiB), the
suite's registry on loopback, and the webhook CLI registered with the API server. Per model size
(random, incompressible data), a Deployment at zero replicas, pinned to the node, opts in to the
webhook with the modelcar pinned by digest; its server's readiness probe reads ``/mnt/models``.

A start is timed from the scale request (a PATCH of the Deployment's scale subresource, what
``kubectl scale --replicas=1`` sends) to the first 50 ms poll of the API server that sees the pod
Ready. Each round, on the same node and kubelet:

* cold: the model image is absent; scale 0 -> 1 (kubelet pulls it), record, scale to 0;
* warm: ``python -m prefetcher agent --once`` with a models file pulls the model (not timed),
  then scale 0 -> 1, record, scale to 0.

Before each start the pods' sandboxes are removed through CRI and the model image with them
(``RemoveImage``), and the image filesystem is checked to be back to its empty usage, so every
cold start pulls and unpacks everything again; dirty pages are written back (``sync``) before each
start, so a warm start does not pay for the writeback of the prefetch just before it. The server
image is present throughout. kubelet's Events confirm each case: a cold start has ``Pulling`` and
"Successfully pulled" (its pull time is printed); a warm one only "already present on machine".
The registry is on loopback, so a cold start here is the best case for cold.

``--cpu-modelcar`` replaces the webhook's ``cpuModelcar`` (request = limit of the injected
containers; shipped 10m, KServe's value): runc starts each container and each exec probe inside
the container's cgroup, so that CFS quota (1 ms of CPU per 100 ms) stretches every start of
``modelcar-init`` and ``modelcar`` and every startup probe of the modelcar.

    .venv/bin/python bench/scale_from_zero.py [--rounds 3] [--sizes 256,1024] [--cpu-modelcar 10m]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prefetcher.adapters.cri import CriImageRuntime  # noqa: E402
from tests.support.agent_process import prefetch_models  # noqa: E402
from tests.support.cluster import start_cluster  # noqa: E402
from tests.support.kubelet import KubeletOptions  # noqa: E402
from tests.support.node import NodeCluster, start_node  # noqa: E402
from tests.support.oci import PushedImage, push_modelcar, push_sandbox_image  # noqa: E402
from tests.support.pods import CriPods  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402
from tests.support.scaling import MODEL_CONFIG_FILE, Scaler, image_events, modelcar_deployment  # noqa: E402
from tests.support.webhook import webhook_process  # noqa: E402

MIB = 1024**2
# Room for the 1 GiB model (compressed content plus unpacked snapshot, about 2.1 GiB) and plenty
# more: usage stays far below kubelet's image GC threshold and the agent's budget.
IMAGE_FS_MB = 6144
EMPTY_SLACK_BYTES = 16 * MIB
_DURATION = re.compile(r"([\d.]+)(h|ms|µs|us|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6}


def go_duration_seconds(text: str) -> float:
    """A Go duration as kubelet prints it (``1m2.5s``, ``850ms``) in seconds."""
    return sum(float(value) * _UNIT_SECONDS[unit] for value, unit in _DURATION.findall(text))


@dataclass
class Timings:
    """Seconds from scale request to Ready, per case; kubelet's own pull times of the cold starts."""

    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    pulls: list[float] = field(default_factory=list)


def clear(node: NodeCluster, model: PushedImage, workdir: Path, empty_bytes: int) -> None:
    """Remove the stopped pods' sandboxes and the model image; check the image fs is empty again."""
    with CriPods(node.endpoint, log_root=workdir / "cri") as pods:
        pods.remove_all()
    with CriImageRuntime(node.endpoint) as runtime:
        if (image := runtime.image_status(model.ref)) is not None:
            runtime.remove_image(image.id)
    used = node.image_fs_usage().used_bytes
    if used > empty_bytes + EMPTY_SLACK_BYTES:
        raise RuntimeError(f"image fs holds {(used - empty_bytes) / MIB:.0f} MiB more than when empty")


def start(scaler: Scaler, node: NodeCluster, ns: str, name: str, model: PushedImage) -> tuple[float, str]:
    """Scale ``name`` 0 -> 1 and back; seconds to Ready, and kubelet's Pulled message for the model."""
    # Write back what the last pull or removal left dirty first: in production a prefetch happens
    # long before the scale-up, and its writeback must not slow the start measured right after it.
    os.sync()
    seconds, pod = scaler.scale_up(ns, name)
    pod_name = pod["metadata"]["name"]

    def modelcar_event() -> list[str] | None:
        events = [e for e in image_events(node, ns, pod_name) if model.ref in e["message"]]
        done = any(e["container"] == "spec.initContainers{modelcar}" for e in events)
        return [f"{e['reason']}: {e['message']}" for e in events] if done else None

    messages = node.wait_for(modelcar_event, what=f"image Events of {pod_name}")
    scaler.scale_down(ns, name)
    return seconds, "\n".join(messages)


def measure(
    node: NodeCluster,
    scaler: Scaler,
    ns: str,
    model: PushedImage,
    *,
    registry_host: str,
    rounds: int,
    workdir: Path,
) -> Timings:
    """``rounds`` of (cold, warm) starts of the Deployment named after ``model``'s repository."""
    name = model.repository.rsplit("/", 1)[-1]
    empty = node.image_fs_usage().used_bytes
    timings = Timings()
    for index in range(1, rounds + 1):
        clear(node, model, workdir, empty)
        seconds, events = start(scaler, node, ns, name, model)
        pulled = re.search(r"Successfully pulled image \S+ in (\S+) ", events)
        if "Pulling" not in events or pulled is None:
            raise RuntimeError(f"cold start without a pull:\n{events}")
        timings.cold.append(seconds)
        timings.pulls.append(go_duration_seconds(pulled.group(1)))
        clear(node, model, workdir, empty)
        started = time.monotonic()
        agent = prefetch_models(node.containerd, [registry_host], workdir / "agent", [model.uri])
        if agent.returncode != 0:
            raise RuntimeError(f"agent --once exited {agent.returncode}:\n{agent.stdout}\n{agent.stderr}")
        prefetch = time.monotonic() - started
        seconds, events = start(scaler, node, ns, name, model)
        if "Pulling" in events or "already present on machine" not in events:
            raise RuntimeError(f"warm start pulled:\n{events}")
        timings.warm.append(seconds)
        print(
            f"{name} round {index}: cold {timings.cold[-1]:.2f}s (kubelet pull {timings.pulls[-1]:.2f}s), "
            f"warm {seconds:.2f}s (agent prefetch {prefetch:.1f}s, not timed)",
            flush=True,
        )
    clear(node, model, workdir, empty)
    return timings


def seconds_list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def report(results: dict[int, Timings]) -> None:
    """The medians per size, warm/cold, and the warm start of the largest over the smallest."""
    print("size       cold (median)  warm (median)  warm/cold  kubelet pull (median)")
    for size, t in results.items():
        cold, warm = statistics.median(t.cold), statistics.median(t.warm)
        pull = statistics.median(t.pulls)
        print(f"{size:5d} MiB  {cold:12.2f}s  {warm:12.2f}s  {warm / cold:9.3f}  {pull:10.2f}s")
        print(f"           cold {seconds_list(t.cold)}; warm {seconds_list(t.warm)}")
    sizes = sorted(results)
    if len(sizes) > 1:
        small, large = (statistics.median(results[s].warm) for s in (sizes[0], sizes[-1]))
        print(f"warm {sizes[-1]} MiB / warm {sizes[0]} MiB: {large / small:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="256,1024", help="model sizes in MiB, comma-separated")
    parser.add_argument("--cpu-modelcar", help="the webhook's cpuModelcar instead of the shipped value")
    parser.add_argument("--image-fs-mb", type=int, default=IMAGE_FS_MB)
    opts = parser.parse_args()
    sizes = [int(s) for s in opts.sizes.split(",")]
    settings = {"cpuModelcar": opts.cpu_modelcar} if opts.cpu_modelcar else None
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-zero-"))
    results: dict[int, Timings] = {}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        registry = stack.enter_context(start_registry(workdir / "registry"))
        cluster = stack.enter_context(start_cluster(workdir / "cluster"))
        sandbox = push_sandbox_image(registry)
        node = stack.enter_context(
            start_node(
                cluster,
                workdir / "node",
                registry_host=registry.host,
                sandbox_image=sandbox.tag_ref,
                image_fs_mb=opts.image_fs_mb,
                options=KubeletOptions(),
            )
        )
        server = push_sandbox_image(registry, repository="bench/server", tag="v1")
        with CriPods(node.endpoint, log_root=workdir / "cri") as pods:
            pods.ensure_image(server.ref)
        ns = f"bench-{uuid.uuid4().hex[:6]}"
        cluster.create_namespace(ns)
        webhook_dir = workdir / "webhook"
        stack.enter_context(webhook_process(cluster.apiserver, webhook_dir, namespace=ns, settings=settings))
        scaler = stack.enter_context(Scaler(node))
        for size in sizes:
            started = time.monotonic()
            model = push_modelcar(
                registry,
                f"bench/m{size}",
                files={MODEL_CONFIG_FILE: b'{"model": "bench"}'},
                model_size_bytes=size * MIB,
                seed=size,
            )
            print(f"pushed the {size} MiB modelcar in {time.monotonic() - started:.1f}s", flush=True)
            spec = modelcar_deployment(
                f"m{size}", ns, node_name=node.node_name, model_uri=model.uri, server_image=server.ref
            )
            cluster.apiserver.kubectl("apply", "-f", "-", input=json.dumps(spec))
            results[size] = measure(
                node, scaler, ns, model, registry_host=registry.host, rounds=opts.rounds, workdir=workdir
            )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
