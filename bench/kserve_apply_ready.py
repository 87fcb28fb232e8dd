"""InferenceService apply -> pod Ready and the server answering, through KServe v0.20 and a real kubelet.

KServe's published modelcar benchmark times InferenceService apply to first prediction. This one
does the same on the test cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
one kubelet node whose containerd keeps images on a loop-mounted ext4) with KServe's own
controller manager and webhooks (``tests.support.kserve``) in Standard mode. The registry sits
behind ``tests.support.throttle``, a proxy capping its answers at ``--rate-mb`` MB/s, so a cold
pull pays for a remote registry rather than loopback; the node and the agent pull through it.

Per model size (random, incompressible data) and round, three starts of the same InferenceService
shape, a ``kserve-container`` (busybox ``httpd``) whose readiness probe fetches ``config.json``:

* floor: no model at all (no ``STORAGE_URI``); the server serves a ``config.json`` from its own
  image, so the pod is the same minus KServe's modelcar wiring;
* cold: ``STORAGE_URI=oci://…`` naming a model image the node does not hold (kubelet pulls it);
* warm: the same, after ``python -m prefetcher agent --once`` pulled the model (not timed).

A start is timed from just before ``kubectl apply`` of the InferenceService to the first 50 ms poll
that sees the predictor pod Ready and gets the model's ``config.json`` from the server. Between
starts the InferenceService is deleted, its pods' sandboxes and the model image are removed and the
image filesystem is checked to be back to its empty usage; dirty pages are written back first.
kubelet's Events confirm each case (cold: ``Pulling``; warm: "already present on machine").

    .venv/bin/python bench/kserve_apply_ready.py [--rounds 3] [--sizes 256,1024] [--rate-mb 100] \\
        [--cpu-modelcar 100m]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prefetcher.adapters.cri import CriImageRuntime  # noqa: E402
from tests.support.agent_process import prefetch_models  # noqa: E402
from tests.support.cluster import start_cluster  # noqa: E402
from tests.support.kserve import start_kserve  # noqa: E402
from tests.support.kserve_workloads import inference_service, server_container  # noqa: E402
from tests.support.kubelet import KubeletOptions  # noqa: E402
from tests.support.node import NodeCluster, condition, start_node  # noqa: E402
from tests.support.oci import (  # noqa: E402
    PushedImage,
    busybox_layer,
    host_platform,
    model_layer,
    push_image,
    push_modelcar,
    push_sandbox_image,
)
from tests.support.pods import CriPods  # noqa: E402
from tests.support.registry import free_port, start_registry  # noqa: E402
from tests.support.scaling import image_events  # noqa: E402
from tests.support.throttle import throttled_proxy  # noqa: E402

MIB = 1024**2
IMAGE_FS_MB = 6144
EMPTY_SLACK_BYTES = 16 * MIB
POLL_SECONDS = 0.05
START_TIMEOUT_SECONDS = 900.0
CASES = ("floor", "cold", "warm")


@dataclass
class Timings:
    seconds: dict[str, list[float]] = field(default_factory=lambda: {case: [] for case in CASES})


@dataclass(frozen=True)
class Bench:
    node: NodeCluster
    namespace: str
    server: PushedImage
    floor_server: PushedImage
    proxy_host: str
    workdir: Path


def via(proxy_host: str, image: PushedImage) -> str:
    """``image`` by digest, named through the proxy."""
    return f"{proxy_host}/{image.repository}@{image.digest}"


def clear(bench: Bench, model_ref: str, empty_bytes: int) -> None:
    """Delete the InferenceService, its sandboxes and the model image; check the image fs is empty."""
    node = bench.node
    node.kubectl(
        "delete", "inferenceservice", "-n", bench.namespace, "--all", "--wait=true", "--timeout=120s"
    )
    node.wait_for(
        lambda: not node.get("pods", "-n", bench.namespace)["items"], what="the benchmark's pods gone"
    )
    with CriPods(node.endpoint, log_root=bench.workdir / "cri") as pods:
        pods.remove_all()
    with CriImageRuntime(node.endpoint) as runtime:
        if (image := runtime.image_status(model_ref)) is not None:
            runtime.remove_image(image.id)
    used = node.image_fs_usage().used_bytes
    if used > empty_bytes + EMPTY_SLACK_BYTES:
        raise RuntimeError(f"image fs holds {(used - empty_bytes) / MIB:.0f} MiB more than when empty")


def answered(port: int, expected: bytes) -> bool:
    with (
        suppress(urllib.error.URLError, OSError),
        urllib.request.urlopen(f"http://127.0.0.1:{port}/config.json", timeout=2) as answer,
    ):
        return bool(answer.read() == expected)
    return False


def start(bench: Bench, case: str, model_ref: str, config: bytes) -> tuple[float, list[dict[str, Any]]]:
    """Apply the InferenceService; seconds to Ready and answering, and kubelet's image Events."""
    port = free_port()
    if case == "floor":
        container = server_container(via(bench.proxy_host, bench.floor_server), port, root="/models")
    else:
        container = server_container(
            via(bench.proxy_host, bench.server),
            port,
            env=[{"name": "STORAGE_URI", "value": f"oci://{model_ref}"}],
        )
    spec = {"predictor": {"containers": [container]}}
    body = json.dumps(inference_service(bench.namespace, "bench", spec, bench.node, gated=False))
    os.sync()
    started = time.monotonic()
    bench.node.kubectl("apply", "-f", "-", input=body)
    deadline = started + START_TIMEOUT_SECONDS
    while True:
        pods = bench.node.get("pods", "-n", bench.namespace, "-l", "component=predictor")["items"]
        ready = [p for p in pods if condition(p, "Ready").get("status") == "True"]
        if ready and answered(port, config):
            seconds = time.monotonic() - started
            return seconds, image_events(bench.node, bench.namespace, ready[0]["metadata"]["name"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"{case}: not Ready within {START_TIMEOUT_SECONDS}s\n{bench.node.log_tails()}")
        time.sleep(POLL_SECONDS)


def check_events(case: str, model_ref: str, events: list[dict[str, Any]]) -> None:
    mine = [e for e in events if model_ref in e["message"]]
    pulled = any(e["reason"] == "Pulling" for e in mine)
    present = any("already present on machine" in e["message"] for e in mine)
    if case == "cold" and not pulled:
        raise RuntimeError(f"cold start without a pull: {mine}")
    if case == "warm" and (pulled or not present):
        raise RuntimeError(f"warm start pulled: {mine}")
    if case == "floor" and mine:
        raise RuntimeError(f"floor start touched the model: {mine}")


def measure(bench: Bench, model: PushedImage, config: bytes, rounds: int) -> Timings:
    model_ref = via(bench.proxy_host, model)
    empty = bench.node.image_fs_usage().used_bytes
    timings = Timings()
    for index in range(1, rounds + 1):
        line = []
        for case in CASES:
            clear(bench, model_ref, empty)
            if case == "warm":
                agent = prefetch_models(
                    bench.node.containerd, [bench.proxy_host], bench.workdir / "agent", [f"oci://{model_ref}"]
                )
                if agent.returncode != 0:
                    raise RuntimeError(
                        f"agent --once exited {agent.returncode}:\n{agent.stdout}\n{agent.stderr}"
                    )
            seconds, events = start(bench, case, model_ref, config if case != "floor" else FLOOR_CONFIG)
            check_events(case, model_ref, events)
            timings.seconds[case].append(seconds)
            line.append(f"{case} {seconds:.2f}s")
        print(f"{model.repository} round {index}: {', '.join(line)}", flush=True)
    clear(bench, model_ref, empty)
    return timings


FLOOR_CONFIG = b'{"model": "none"}'


def report(results: dict[int, Timings], rate_mb: float) -> None:
    print(f"registry behind a {rate_mb:g} MB/s proxy; medians of apply -> Ready and answering")
    print("size       floor     cold      warm      warm-floor  cold/warm")
    medians: dict[int, dict[str, float]] = {}
    for size, t in results.items():
        m = {case: statistics.median(v) for case, v in t.seconds.items()}
        medians[size] = m
        print(
            f"{size:5d} MiB  {m['floor']:6.2f}s  {m['cold']:7.2f}s  {m['warm']:6.2f}s  "
            f"{m['warm'] - m['floor']:9.2f}s  {m['cold'] / m['warm']:8.2f}x"
        )
        print("           " + "; ".join(f"{c} {', '.join(f'{v:.2f}' for v in t.seconds[c])}" for c in CASES))
    sizes = sorted(medians)
    if len(sizes) > 1:
        small, large = medians[sizes[0]]["warm"], medians[sizes[-1]]["warm"]
        print(f"warm {sizes[-1]} MiB / warm {sizes[0]} MiB: {large / small:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="256,1024", help="model sizes in MiB, comma-separated")
    parser.add_argument("--rate-mb", type=float, default=100.0, help="registry bandwidth, MB/s (10^6 bytes)")
    parser.add_argument("--image-fs-mb", type=int, default=IMAGE_FS_MB)
    parser.add_argument(
        "--cpu-modelcar", help="KServe's cpuModelcar for the modelcar containers (default: as shipped)"
    )
    opts = parser.parse_args()
    sizes = [int(s) for s in opts.sizes.split(",")]
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-kserve-"))
    results: dict[int, Timings] = {}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        registry = stack.enter_context(start_registry(workdir / "registry"))
        proxy = stack.enter_context(throttled_proxy(registry.host, opts.rate_mb * 1e6))
        cluster = stack.enter_context(start_cluster(workdir / "cluster"))
        kserve = stack.enter_context(start_kserve(cluster.apiserver, workdir / "kserve"))
        if opts.cpu_modelcar:
            kserve.set_storage_initializer({"cpuModelcar": opts.cpu_modelcar})
        print(f"KServe cpuModelcar: {kserve.storage_initializer()['cpuModelcar']}", flush=True)
        sandbox = push_sandbox_image(registry)
        node = stack.enter_context(
            start_node(
                cluster,
                workdir / "node",
                registry_host=proxy.host,
                sandbox_image=via(proxy.host, sandbox),
                image_fs_mb=opts.image_fs_mb,
                options=KubeletOptions(),
            )
        )
        platform = host_platform()
        server = push_image(
            registry, "bench/server", layers=(busybox_layer(),), tag="v1", platform=platform, cmd=("/bin/sh",)
        )
        floor = push_image(
            registry,
            "bench/floor-server",
            layers=(busybox_layer(), model_layer({"config.json": FLOOR_CONFIG}, 0, 0)),
            tag="v1",
            platform=platform,
            cmd=("/bin/sh",),
        )
        with CriPods(node.endpoint, log_root=workdir / "cri") as pods:
            for image in (server, floor):
                pods.ensure_image(via(proxy.host, image))
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        cluster.create_namespace(namespace)
        bench = Bench(node, namespace, server, floor, proxy.host, workdir)
        for size in sizes:
            config = json.dumps({"model": f"bench-{size}"}).encode()
            model = push_modelcar(
                registry,
                f"bench/m{size}",
                files={"config.json": config},
                model_size_bytes=size * MIB,
                seed=size,
            )
            results[size] = measure(bench, model, config, opts.rounds)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    report(results, opts.rate_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
