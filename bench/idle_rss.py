"""Resident memory of an idle ``prefetcher agent`` that keeps 1,000 models warm.

Setup: a private registry and containerd (root on the real disk); 1,000 small, distinct modelcars
pushed to 1,000 repositories (a shared busybox layer mounted across repositories plus a model
layer of a few bytes of its own, so each is a separate image in containerd with its own id), all
pulled through CRI before the agent starts: the agent finds every model already warm, so it holds
1,000 desired models, 1,000 cached images and resolver entries, and pulls nothing. This measures
the agent's steady state for a large models file, not the memory of pulling.

The agent is the real process (``python -m prefetcher agent``), listening on 127.0.0.1 with a
free port. Once ``/readyz`` answers 200 and ``prefetcher_last_reconcile_timestamp_seconds`` is set
with 1,000 warm models, it idles a few seconds; its RSS (psutil) is then sampled. The baseline, in
the same run, is the RSS of a process that only imports ``prefetcher.cli`` (interpreter plus the
agent's imports) and idles; the ratio shows what the running agent adds to its own code.

    .venv/bin/python bench/idle_rss.py [--models 1000] [--idle-seconds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prefetcher.adapters.cri import CriImageRuntime  # noqa: E402
from tests.support.containerd import RunningContainerd, start_containerd  # noqa: E402
from tests.support.oci import push_modelcar, push_sandbox_image  # noqa: E402
from tests.support.polling import eventually  # noqa: E402
from tests.support.registry import RunningRegistry, free_port, start_registry  # noqa: E402

MIB = 1024**2
TARGET_MIB = 80.0
READY_TIMEOUT_SECONDS = 180.0


def rss_samples(pid: int, *, count: int = 5, interval: float = 0.2) -> list[int]:
    proc = psutil.Process(pid)
    samples = []
    for _ in range(count):
        samples.append(proc.memory_info().rss)
        time.sleep(interval)
    return samples


def baseline_rss() -> int:
    """RSS of a process that imports the CLI module (all the agent's imports) and idles."""
    code = "import sys, time, prefetcher.cli; print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        return int(statistics.median(rss_samples(proc.pid)))
    finally:
        proc.kill()
        proc.wait(timeout=10)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def warm_models(
    stack: ExitStack, workdir: Path, count: int
) -> tuple[RunningRegistry, RunningContainerd, list[str]]:
    """Registry and containerd with ``count`` modelcars pulled, and the modelcars' URIs."""
    registry = stack.enter_context(start_registry(workdir / "registry"))
    sandbox = push_sandbox_image(registry)
    containerd = stack.enter_context(
        start_containerd(workdir / "c", registry_host=registry.host, sandbox_image=sandbox.tag_ref)
    )
    started = time.monotonic()
    push_modelcar(registry, "idle/m0000", files={"id.txt": b"0\n"})  # first: uploads the shared base

    def push(i: int) -> str:
        return push_modelcar(registry, f"idle/m{i:04d}", files={"id.txt": f"{i}\n".encode()}).uri

    with ThreadPoolExecutor(8) as pool:
        uris = list(pool.map(push, range(count)))
    print(f"pushed {len(uris)} modelcars in {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    with CriImageRuntime(containerd.endpoint) as runtime:

        def pull(uri: str) -> str:
            handle = runtime.start_pull(uri.removeprefix("oci://"), credentials=None, timeout_seconds=120)
            return handle.result(120)

        with ThreadPoolExecutor(8) as pool:
            ids = set(pool.map(pull, uris))
    print(f"pre-pulled them through CRI in {time.monotonic() - started:.1f}s ({len(ids)} distinct images)")
    return registry, containerd, uris


def agent_config(
    workdir: Path, registry: RunningRegistry, containerd: RunningContainerd, port: int
) -> dict[str, object]:
    """The agent's settings for this registry and containerd: defaults otherwise."""
    return {
        "criEndpoint": containerd.endpoint,
        "imageFsPath": str(containerd.root),
        "stateFile": str(workdir / "state.json"),
        "listenAddress": f"127.0.0.1:{port}",
        "registries": {"insecure": [registry.host]},
    }


def start_agent(
    stack: ExitStack, workdir: Path, config: dict[str, object], uris: list[str]
) -> subprocess.Popen[bytes]:
    """The real agent process on ``config`` and a models file of ``uris``; stopped with the stack."""
    config_file, models = workdir / "agent.yaml", workdir / "models.yaml"
    config_file.write_text(json.dumps(config))
    models.write_text(json.dumps({"models": [{"uri": u, "priority": i % 10} for i, u in enumerate(uris)]}))
    return launch_agent(stack, workdir / "agent.log", ["--config", str(config_file), "--models", str(models)])


def launch_agent(stack: ExitStack, log_file: Path, args: list[str]) -> subprocess.Popen[bytes]:
    """``python -m prefetcher agent ARGS`` logging to ``log_file``; stopped (SIGTERM) with the stack."""
    log = stack.enter_context(log_file.open("wb"))
    command = [sys.executable, "-m", "prefetcher", "agent", *args]
    agent = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def stop_agent() -> None:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(timeout=10)

    stack.callback(stop_agent)
    return agent


def wait_settled(agent: subprocess.Popen[bytes], base: str, count: int, log_file: Path) -> None:
    """Until /readyz is 200 and a pass has completed with ``count`` warm models."""

    def settled() -> bool:
        if agent.poll() is not None:
            raise AssertionError(f"agent exited {agent.returncode}: {log_file.read_text()}")
        if get(base + "/readyz")[0] != 200:
            return False
        text = get(base + "/metrics")[1]
        done = metric(text, "prefetcher_last_reconcile_timestamp_seconds") or 0
        warm = metric(text, 'prefetcher_models{state="warm"}') or 0
        return done > 0 and warm == count

    eventually(
        settled, timeout_seconds=READY_TIMEOUT_SECONDS, what="the agent's first pass", interval_seconds=0.2
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-idle-rss-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        registry, containerd, uris = warm_models(stack, workdir, opts.models)
        port = free_port()
        config = agent_config(workdir, registry, containerd, port)
        started = time.monotonic()
        agent = start_agent(stack, workdir, config, uris)
        wait_settled(agent, f"http://127.0.0.1:{port}", len(uris), workdir / "agent.log")
        print(f"agent ready with {len(uris)} warm models {time.monotonic() - started:.1f}s after start")
        time.sleep(opts.idle_seconds)
        agent_rss = int(statistics.median(rss_samples(agent.pid)))
        base_rss = baseline_rss()
    added = (agent_rss - base_rss) / MIB
    print(f"baseline (python importing prefetcher.cli, idle): {base_rss / MIB:.1f} MiB RSS")
    print(f"agent idle with {len(uris)} warm models:           {agent_rss / MIB:.1f} MiB RSS")
    print(f"ratio agent/baseline: {agent_rss / base_rss:.2f}x (agent adds {added:.1f} MiB)")
    verdict = "met" if agent_rss / MIB <= TARGET_MIB else "MISSED"
    print(f"target <= {TARGET_MIB:.0f} MiB: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
