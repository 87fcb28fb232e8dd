"""The agent following InferenceServices at scale: memory after sync and create-to-pull latency.

For each count N (100, then 10,000), against a fresh etcd and kube-apiserver with the suite's
InferenceService CRD, one real registry and one real containerd:

1. a Node like a CPU worker (no GPUs) and N background InferenceServices over 20 namespaces,
   created concurrently (``bench/isvc_objects.py``: a few KB each, 95 % of them for GPUs or other
   node pools, 5 % fitting and naming one of 5 small models already pulled);
2. the real agent (``python -m prefetcher agent --node-name … --kubeconfig …``), default
   settings (``resyncSeconds`` 30), started after the objects exist; "synced" is ``/readyz``
   200 with a completed pass and the 5 warm models counted. Then it idles; its VmRSS (median of
   5 samples) and VmHWM are read from ``/proc``, and its CPU use over the idle time;
3. K measured InferenceServices, created one at a time, each naming its own small modelcar
   pushed to the registry and fitting the node. Latency runs from the create request's answer
   (``time.time()`` after reading the 201) to the pull starting, seen two ways: the agent's CRI
   ``PullImage`` call arriving at containerd (its ``PullImage "<ref>"`` log line: what the agent
   controls), and the start (logged end minus duration) of the first request containerd makes to
   the registry for that manifest digest (the runtime's own delay added). The next create waits
   until the image is in containerd, plus a random pause (so creates land at random phases of
   any timer in the agent).

The 100 row is the baseline: the script prints the 10,000 row's ratios to it.

    .venv/bin/python bench/isvc_scale.py [--counts 100,10000] [--measured 50] [--gap-seconds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.idle_rss import (  # noqa: E402
    agent_config,
    launch_agent,
    rss_samples,
    wait_settled,
    warm_models,
)
from bench.isvc_objects import NODE_LABELS, Creator, background, isvc  # noqa: E402
from prefetcher.adapters.cri import CriImageRuntime  # noqa: E402
from tests.support.apiserver import ApiServer, start_control_plane  # noqa: E402
from tests.support.containerd import RunningContainerd  # noqa: E402
from tests.support.kserve import install_isvc_crd  # noqa: E402
from tests.support.kube_objects import create_node  # noqa: E402
from tests.support.oci import PushedImage, push_modelcar  # noqa: E402
from tests.support.polling import eventually  # noqa: E402
from tests.support.registry import RunningRegistry, free_port  # noqa: E402

MIB = 1024**2
TARGET_RSS_MIB, TARGET_P99_SECONDS = 150.0, 1.0
WARM_MODELS, NAMESPACES = 5, 20
PULL_WAIT_SECONDS = 120.0  # beyond resyncSeconds, so a missed change still shows as a figure
REGISTRY_LINE = re.compile(
    r'time="(?P<time>[^"]+)".*msg="response completed".*'
    r'http\.request\.uri="(?P<uri>[^"]+)" http\.request\.useragent="containerd/.*'
    r'http\.response\.duration="?(?P<duration>[0-9.]+)(?P<unit>ns|µs|us|ms|s)\b'  # quoted when in µs
)
PULL_LINE = re.compile(r'time="(?P<time>[^"]+)".*msg="PullImage \\"(?P<ref>[^"\\]+)\\""$')
UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def go_time(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time with up to nanoseconds, as Go's logs write it."""
    head, _, fraction = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{fraction or 0}")


class PullObserver:
    """When pulls started, read from the registry's and containerd's logs as they grow."""

    def __init__(self, registry: RunningRegistry, containerd: RunningContainerd) -> None:
        self._files = {"registry": registry.log_file, "containerd": containerd.log_file}
        self._offsets = {name: path.stat().st_size for name, path in self._files.items()}
        self.manifest_requested: dict[str, float] = {}  # "/v2/<repo>/manifests/<digest>" -> start
        self.pull_called: dict[str, float] = {}  # reference -> containerd's PullImage log time

    def poll(self) -> None:
        """Read what the logs gained since the last call."""
        for name, path in self._files.items():
            with path.open("rb") as log:
                log.seek(self._offsets[name])
                data = log.read()
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[name] += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                self._read(line)

    def _read(self, line: str) -> None:
        if found := REGISTRY_LINE.search(line):
            start = go_time(found["time"]) - float(found["duration"]) * UNITS[found["unit"]]
            self.manifest_requested[found["uri"]] = min(
                start, self.manifest_requested.get(found["uri"], start)
            )
        elif found := PULL_LINE.search(line):
            self.pull_called.setdefault(found["ref"], go_time(found["time"]))

    def started(self, image: PushedImage) -> tuple[float, float] | None:
        """(registry, containerd) start times of the pull of ``image``, once both are logged."""
        self.poll()
        registry = self.manifest_requested.get(f"/v2/{image.repository}/manifests/{image.digest}")
        called = self.pull_called.get(image.ref)
        return None if registry is None or called is None else (registry, called)


@dataclass
class Row:
    """The figures of one count."""

    count: int
    object_bytes: int
    create_seconds: float
    sync_seconds: float
    rss: int
    hwm: int
    idle_cpu_percent: float
    cri_latencies: list[float]
    registry_latencies: list[float]


@dataclass(frozen=True)
class Env:
    """What every count shares: the registry, containerd, and the URIs of the models kept warm."""

    registry: RunningRegistry
    containerd: RunningContainerd
    warm: list[str]


def proc_status(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure_pulls(
    creator: Creator, observer: PullObserver, runtime: CriImageRuntime, images: list[PushedImage], gap: float
) -> tuple[list[float], list[float]]:
    """Create one fitting InferenceService per image; seconds from create to pull start (CRI, registry)."""
    cri_latencies, registry_latencies = [], []
    for j, image in enumerate(images):
        obj = isvc(f"team-{j % NAMESPACES:02d}", f"measured-{j:03d}", image.uri, placement="cpu")
        created = creator.create_isvc(obj)
        what = f"the pull of {image.ref}"
        registry, called = eventually(
            partial(observer.started, image), timeout_seconds=PULL_WAIT_SECONDS, what=what
        )
        eventually(partial(runtime.image_status, image.ref), timeout_seconds=PULL_WAIT_SECONDS, what=what)
        cri_latencies.append(called - created)
        registry_latencies.append(registry - created)
        print(f"  {image.repository}: PullImage {called - created:.3f}s, registry {registry - created:.3f}s")
        time.sleep(random.uniform(0.5 * gap, 1.5 * gap))
    return cri_latencies, registry_latencies


def populate(
    server: ApiServer, count: int, registry: RunningRegistry, warm: list[str]
) -> tuple[str, list[Any]]:
    """This node and ``count`` background InferenceServices; the node's name and the objects."""
    install_isvc_crd(server)
    node = create_node(server, labels=NODE_LABELS)
    creator = Creator(server)
    namespaces = [f"team-{k:02d}" for k in range(NAMESPACES)]
    creator.create_namespaces(namespaces)
    objects = background(namespaces, count, registry_host=registry.host, warm=warm)
    creator.create_many(objects)
    return node, objects


def start_synced_agent(
    stack: ExitStack, workdir: Path, server: ApiServer, node: str, *, expected_warm: int, env: Env
) -> subprocess.Popen[bytes]:
    """The agent following InferenceServices for ``node``, once its first pass counted the warm models."""
    port = free_port()
    (workdir / "agent.yaml").write_text(json.dumps(agent_config(workdir, env.registry, env.containerd, port)))
    args = [
        "--config",
        str(workdir / "agent.yaml"),
        "--node-name",
        node,
        "--kubeconfig",
        str(server.kubeconfig),
    ]
    agent = launch_agent(stack, workdir / "agent.log", args)
    wait_settled(agent, f"http://127.0.0.1:{port}", expected_warm, workdir / "agent.log")
    return agent


def run_count(
    count: int, *, workdir: Path, env: Env, images: list[PushedImage], opts: argparse.Namespace
) -> Row:
    """Everything for one count N, against a control plane of its own."""
    with ExitStack() as stack:
        server = stack.enter_context(start_control_plane(workdir / "control-plane"))
        started = time.monotonic()
        node, objects = populate(server, count, env.registry, env.warm)
        create_seconds = time.monotonic() - started
        print(f"N={count}: created in {create_seconds:.1f}s; load average {os.getloadavg()[0]:.1f}")
        expected_warm = len({o["spec"]["predictor"]["model"]["storageUri"] for o in objects} & set(env.warm))
        started = time.monotonic()
        agent = start_synced_agent(stack, workdir, server, node, expected_warm=expected_warm, env=env)
        sync_seconds = time.monotonic() - started
        process = psutil.Process(agent.pid)
        cpu_before = sum(process.cpu_times()[:2])
        time.sleep(opts.idle_seconds)
        idle_cpu = (sum(process.cpu_times()[:2]) - cpu_before) / opts.idle_seconds * 100
        rss, hwm = int(statistics.median(rss_samples(agent.pid))), proc_status(agent.pid, "VmHWM")
        print(
            f"N={count}: synced {sync_seconds:.1f}s after start; "
            f"RSS {rss / MIB:.1f} MiB, HWM {hwm / MIB:.1f} MiB"
        )
        observer = PullObserver(env.registry, env.containerd)
        runtime = stack.enter_context(CriImageRuntime(env.containerd.endpoint))
        try:
            latencies = measure_pulls(Creator(server), observer, runtime, images, opts.gap_seconds)
        except AssertionError as err:
            tail = "\n".join((workdir / "agent.log").read_text().splitlines()[-40:])
            raise AssertionError(f"{err}\nagent log:\n{tail}") from err
    remove_images(env.containerd, images)  # with the agent stopped, or it would pull them again
    object_bytes = int(statistics.mean(len(json.dumps(o)) for o in objects))
    return Row(count, object_bytes, create_seconds, sync_seconds, rss, hwm, idle_cpu, *latencies)


def remove_images(containerd: RunningContainerd, images: list[PushedImage]) -> None:
    """Leave the image store as the next count should find it."""
    with CriImageRuntime(containerd.endpoint) as runtime:
        for image in images:
            if (found := runtime.image_status(image.ref)) is not None:
                runtime.remove_image(found.id)


def p99(values: list[float]) -> float:
    """The 99th percentile, interpolated between the closest ranks."""
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def spread(values: list[float]) -> str:
    """p50 / p99 / max in seconds."""
    return f"{statistics.median(values):.3f} / {p99(values):.3f} / {max(values):.3f} s"


def report(rows: list[Row]) -> None:
    """The table, the ratios of the largest count to the smallest, and the verdicts."""
    print(
        "\n| ISVCs | bytes each | create all | agent sync | RSS after sync | VmHWM | idle CPU "
        "| create -> PullImage p50 / p99 / max | create -> registry request p50 / p99 / max |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r.count:,} | {r.object_bytes:,} | {r.create_seconds:.1f} s | {r.sync_seconds:.1f} s "
            f"| {r.rss / MIB:.1f} MiB | {r.hwm / MIB:.1f} MiB | {r.idle_cpu_percent:.1f} % "
            f"| {spread(r.cri_latencies)} | {spread(r.registry_latencies)} |"
        )
    base, top = rows[0], rows[-1]
    print(
        f"\nratios {top.count:,}/{base.count:,}: RSS {top.rss / base.rss:.2f}x, "
        f"p99 to PullImage {p99(top.cri_latencies) / p99(base.cri_latencies):.2f}x, "
        f"p99 to the registry request {p99(top.registry_latencies) / p99(base.registry_latencies):.2f}x"
    )
    verdict = {True: "met", False: "MISSED"}
    print(
        f"target RSS <= {TARGET_RSS_MIB:.0f} MiB at {top.count:,}: {verdict[top.rss / MIB <= TARGET_RSS_MIB]}"
    )
    for name, values in (("PullImage", top.cri_latencies), ("the registry request", top.registry_latencies)):
        met = verdict[p99(values) <= TARGET_P99_SECONDS]
        print(f"target p99 <= {TARGET_P99_SECONDS:.0f} s at {top.count:,}, create to {name}: {met}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--counts", default="100,10000", help="InferenceService counts, smallest (baseline) first"
    )
    parser.add_argument("--measured", type=int, default=50, help="measured creates per count")
    parser.add_argument("--gap-seconds", type=float, default=1.0, help="mean pause between measured creates")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument(
        "--keep", action="store_true", help="keep the work dir (agent, registry, containerd logs)"
    )
    opts = parser.parse_args()
    counts = [int(c) for c in opts.counts.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-isvc-scale-"))
    rows = []
    with ExitStack() as stack:
        if not opts.keep:
            stack.callback(shutil.rmtree, workdir, True)
        env = Env(*warm_models(stack, workdir, WARM_MODELS))
        for count in counts:
            images = [
                push_modelcar(
                    env.registry, f"scale/n{count}-m{j:03d}", files={"id.txt": f"{count} {j}\n".encode()}
                )
                for j in range(opts.measured)
            ]
            (workdir / f"n{count}").mkdir()
            rows.append(run_count(count, workdir=workdir / f"n{count}", env=env, images=images, opts=opts))
    if opts.keep:
        print(f"logs kept under {workdir}")
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
