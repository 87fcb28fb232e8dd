"""Test support: the agent CLI following InferenceServices, as a process of its own.

``agent_config`` is the agent's configuration for a test containerd and registries (JSON, which is
YAML). ``run_agent_once`` runs ``prefetcher agent --once``; ``prefetch_models`` runs it once over a
models file instead of InferenceServices; ``running_agent`` keeps ``prefetcher
agent`` running with its metrics on a free loopback port, and every probe of it fails at once, with
its log, if the process died.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.apiserver import ApiServer
from tests.support.containerd import RunningContainerd
from tests.support.polling import eventually
from tests.support.registry import RunningRegistry, free_port

AGENT_TIMEOUT_SECONDS = 300
STOP_TIMEOUT_SECONDS = 20
_T = TypeVar("_T")

TAINT = "modelcar-prefetcher.io/warming"


def agent_config(
    containerd: RunningContainerd, registry_hosts: Sequence[str], workdir: Path, **overrides: Any
) -> dict[str, Any]:
    """A configuration for ``containerd``, with its state under ``workdir`` and metrics on a free port."""
    config: dict[str, Any] = {
        "criEndpoint": containerd.endpoint,
        "imageFsPath": str(containerd.root),
        "stateFile": str(workdir / "state.json"),
        "listenAddress": f"127.0.0.1:{free_port()}",
        "registries": {"insecure": list(registry_hosts), "timeoutSeconds": 10},
    }
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    return config


def agent_command(
    config: Path, *, node: str, kubeconfig: Path, once: bool, extra: Sequence[str] = ()
) -> list[str]:
    """``prefetcher agent`` for ``node`` with ``config``, following InferenceServices."""
    command = [sys.executable, "-m", "prefetcher", "agent", "--config", str(config), "--node-name", node]
    return [*command, "--kubeconfig", str(kubeconfig), *(["--once"] if once else []), *extra]


def run_agent_once(
    config: Path, *, node: str, kubeconfig: Path, extra: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """One full plan of the agent, carried out; its exit code and output."""
    command = agent_command(config, node=node, kubeconfig=kubeconfig, once=True, extra=extra)
    return subprocess.run(command, capture_output=True, text=True, timeout=AGENT_TIMEOUT_SECONDS, check=False)


def prefetch_models(
    containerd: RunningContainerd, registry_hosts: Sequence[str], workdir: Path, uris: Sequence[str]
) -> subprocess.CompletedProcess[str]:
    """``prefetcher agent --once`` with a models file naming ``uris``, files under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config, models = workdir / "agent.yaml", workdir / "models.yaml"
    config.write_text(json.dumps(agent_config(containerd, registry_hosts, workdir)))
    models.write_text(json.dumps({"models": [{"uri": uri} for uri in uris]}))
    command = [sys.executable, "-m", "prefetcher", "agent", "--config", str(config), "--models", str(models)]
    return subprocess.run(
        [*command, "--once"], capture_output=True, text=True, timeout=AGENT_TIMEOUT_SECONDS, check=False
    )


@dataclass
class AgentProcess:
    """A running agent; ``metric`` reads one sample from its /metrics."""

    process: subprocess.Popen[bytes]
    log_file: Path
    metrics_url: str

    def log(self) -> str:
        """Everything the agent logged so far."""
        return self.log_file.read_text(errors="replace")

    def check(self) -> None:
        """Fail with the log when the agent is no longer running."""
        if self.process.poll() is not None:
            raise AssertionError(f"the agent exited with {self.process.returncode}:\n{self.log()[-4000:]}")

    def metric(self, name: str, **labels: str) -> float:
        """The value of the sample ``name`` with exactly ``labels`` (0 when absent)."""
        self.check()
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def wait(self, probe: Callable[[], _T | None], *, what: str, timeout_seconds: float = 60.0) -> _T:
        """Poll ``probe`` while the agent runs; fail with the log tail after the deadline."""

        def checked() -> _T | None:
            self.check()
            return probe()

        try:
            return eventually(checked, timeout_seconds=timeout_seconds, what=what)
        except AssertionError as err:
            raise AssertionError(f"{err}\nagent log:\n{self.log()[-4000:]}") from err


@contextmanager
def running_agent(
    config: Path, *, node: str, kubeconfig: Path, log_file: Path, extra: Sequence[str] = ()
) -> Iterator[AgentProcess]:
    """Run the agent until the block exits, then stop it with SIGTERM as kubelet would."""
    address = yaml.safe_load(config.read_text())["listenAddress"]
    command = agent_command(config, node=node, kubeconfig=kubeconfig, once=False, extra=extra)
    with log_file.open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    agent = AgentProcess(process, log_file, f"http://{address}/metrics")
    try:
        yield agent
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_SECONDS)

def run_cluster_agent(
    apiserver: ApiServer,
    containerd: RunningContainerd,
    registry: RunningRegistry,
    workdir: Path,
    node: str,
    *extra: str,
    namespace: str,
) -> subprocess.CompletedProcess[str]:
    """``prefetcher agent --once`` for ``node``, following ``namespace``; lifts ``TAINT``."""
    config = workdir / f"agent-{node}.yaml"
    settings = agent_config(
        containerd,
        [registry.host],
        workdir,
        stateFile=str(workdir / f"state-{node}.json"),
        # Only this test's namespace: other tests leave InferenceServices naming unreachable registries.
        kubernetes={"startupTaint": TAINT, "namespaces": [namespace]},
    )
    config.write_text(json.dumps(settings))
    return run_agent_once(config, node=node, kubeconfig=apiserver.kubeconfig, extra=extra)
