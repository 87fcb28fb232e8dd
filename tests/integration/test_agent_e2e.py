"""The agent end to end: the real CLI against a real containerd (on a small tmpfs) and a real registry.

Each test writes a config and a models file, runs ``prefetcher agent --once`` (or ``plan``) as a
process, and checks the image store through CRI and the filesystem through statvfs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.containerd import RunningContainerd
from tests.support.oci import PushedImage, push_modelcar
from tests.support.pods import ContainerSpec, CriPods
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration
MIB = 1024**2


@dataclass
class Node:
    """One containerd with its own small image filesystem, and the agent's files beside it."""

    containerd: RunningContainerd
    registry: RunningRegistry
    workdir: Path

    def config(self, **budget: object) -> Path:
        path = self.workdir / "agent.yaml"
        path.write_text(json.dumps({
            "criEndpoint": self.containerd.endpoint,
            "imageFsPath": str(self.containerd.root),
            "stateFile": str(self.workdir / "state.json"),
            "listenAddress": "127.0.0.1:0",
            "budget": {"maxUsagePercent": 60, **budget},
            "eviction": {"graceSeconds": 0},
            "pull": {"stallSeconds": 60, "backoffBaseSeconds": 1},
            "registries": {"insecure": [self.registry.host], "timeoutSeconds": 10},
        }))
        return path

    def models(self, *entries: tuple[str, int]) -> Path:
        path = self.workdir / "models.yaml"
        path.write_text(json.dumps({"models": [{"uri": u, "priority": p} for u, p in entries]}))
        return path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "prefetcher", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    def agent_once(self, config: Path, models: Path) -> subprocess.CompletedProcess[str]:
        return self.run("agent", "--config", str(config), "--models", str(models), "--once")

    def refs(self) -> set[str]:
        return self.containerd.image_refs()

    def used_bytes(self) -> int:
        st = os.statvfs(self.containerd.root)
        return (st.f_blocks - st.f_bavail) * st.f_frsize


@pytest.fixture
def node(containerd_factory, registry: RunningRegistry, tmp_path: Path) -> Iterator[Node]:  # type: ignore[no-untyped-def]
    yield Node(containerd_factory(root_size_mb=256), registry, tmp_path)


def modelcar(registry: RunningRegistry, name: str, size_mib: int) -> PushedImage:
    return push_modelcar(registry, f"models/{name}", model_size_bytes=size_mib * MIB, seed=hash(name) % 1000)


def test_pulls_by_digest_within_the_budget_and_states_what_it_skipped(node: Node) -> None:
    high, low = modelcar(node.registry, "high", 40), modelcar(node.registry, "low", 40)
    config, models = node.config(), node.models((high.uri, 10), (low.uri, 1))
    plan = node.run("plan", "--config", str(config), "--models", str(models), "-o", "json")
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    assert [p["ref"] for p in doc["pulls"]] == [high.ref]
    assert [(s["ref"], s["reason"]) for s in doc["skips"]] == [(low.ref, "budget")]
    assert high.ref not in node.refs(), "plan must change nothing"

    result = node.agent_once(config, models)
    assert result.returncode == 0, result.stderr
    assert high.ref in node.refs() and low.ref not in node.refs()
    assert f"skip     {low.ref}  (budget)" in result.stdout
    limit = os.statvfs(node.containerd.root).f_blocks * os.statvfs(node.containerd.root).f_frsize * 0.60
    assert node.used_bytes() <= limit
    state = json.loads((node.workdir / "state.json").read_text())
    assert state["managed"][high.ref]["cost_bytes"] >= 40 * MIB


def test_a_restarted_agent_remembers_what_it_pulled_and_evicts_it_when_unwanted(node: Node) -> None:
    kept, dropped = modelcar(node.registry, "kept", 8), modelcar(node.registry, "dropped", 8)
    config = node.config()
    assert node.agent_once(config, node.models((kept.uri, 1), (dropped.uri, 1))).returncode == 0
    assert {kept.ref, dropped.ref} <= node.refs()
    again = node.agent_once(config, node.models((kept.uri, 1)))
    assert again.returncode == 0, again.stderr
    assert "pulling" not in again.stderr, "a restart must not pull again"
    assert kept.ref in node.refs() and dropped.ref not in node.refs()
    assert "evicted" in again.stderr


def test_images_in_use_or_not_pulled_by_the_agent_are_never_evicted(node: Node) -> None:
    used, foreign = modelcar(node.registry, "used", 4), modelcar(node.registry, "foreign", 4)
    config = node.config()
    assert node.agent_once(config, node.models((used.uri, 1))).returncode == 0
    pods = CriPods(node.containerd.endpoint, log_root=node.workdir / "logs")
    pods.ensure_image(foreign.ref)  # pulled by someone else: not the agent's to remove
    with pods.sandbox("server") as sandbox:
        container = sandbox.start(ContainerSpec("server", used.ref, command=["sleep", "3600"]))
        sandbox.wait_running(container)
        result = node.agent_once(config, node.models())
        assert result.returncode == 0, result.stderr
        assert used.ref in node.refs(), "an image in use was evicted"
    assert foreign.ref in node.refs(), "an image the agent did not pull was evicted"


def test_bad_models_fail_clearly_while_the_good_one_is_pulled(node: Node) -> None:
    good = modelcar(node.registry, "good", 4)
    missing = f"oci://{node.registry.host}/models/absent@sha256:{'0' * 64}"
    unreachable = f"oci://127.0.0.1:9/models/x@sha256:{'1' * 64}"
    models = node.models(("oci://Not/A/Valid/Ref", 5), (missing, 5), (unreachable, 5), (good.uri, 1))
    result = node.agent_once(node.config(), models)
    assert result.returncode == 1
    assert good.ref in node.refs()
    assert "invalid repository component 'Not'" in result.stdout
    assert "absent" in result.stdout and "404" in result.stdout
    assert "127.0.0.1:9" in result.stdout


def test_a_stopped_runtime_is_a_clear_error(node: Node) -> None:
    config, models = node.config(), node.models()
    node.containerd.stop()
    result = node.agent_once(config, models)
    assert result.returncode == 1
    assert node.containerd.endpoint.removeprefix("unix://") in result.stderr + result.stdout
    node.containerd.start()
