"""kubelet's own image GC against the agent's disk budget, on two real nodes. Slow: about 6 minutes.

kubelet runs image GC on a fixed 5-minute period (``ImageGCPeriod`` in pkg/kubelet/kubelet.go, not
configurable), so this module waits for one real pass instead of imitating it. What decides the wait
(Kubernetes v1.32, ``pkg/kubelet/images/image_gc_manager.go``):

- A GC pass detects images itself and stamps new ones ``firstDetected`` = the pass's own time, so an
  image first seen by a pass is younger than ``imageMinimumGCAge`` and spared by it. Images pulled
  while kubelet runs are detected by that pass at the earliest (or the 5-minute detection loop).
  kubelet is therefore restarted after the pulls: detection at start-up records them, and the pass
  5 minutes later finds them 5 minutes old, past the default minimum age of 2 minutes.
- A pass logs its outcome only at ``--v=4`` ("Image garbage collection succeeded"; at ``--v=1``
  right after a failed pass, such as the one at start-up, which has no filesystem stats yet). The
  nodes raise ``kubelet.go`` to 4 (and ``image_gc_manager.go`` to 5, its per-image decisions) with
  ``logging.vmodule``, so every pass leaves one line: the second after the restart is the periodic one.

Both nodes use kubelet's defaults (thresholds 85/80, ``imageMinimumGCAge`` 2m) on a 300 MiB ext4,
eviction off (the fixture's default), and get the same models from the agent CLI. Their kubelets
restart together, so one wait covers both passes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.agent_process import AGENT_TIMEOUT_SECONDS, agent_config
from tests.support.cluster import NodeClusterFactory
from tests.support.kubelet import KubeletOptions
from tests.support.node import NodeCluster
from tests.support.oci import PushedImage, push_modelcar
from tests.support.polling import eventually
from tests.support.registry import RunningRegistry

# One test: about 6 minutes, nearly all of it kubelet's 5-minute GC period.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
MIB = 1024**2
IMAGE_FS_MB = 300  # 279 MiB as statvfs sees it
MODEL_MIB = 40  # about 82 MiB on disk each: two fit under 80 %, three pass 85 %
GC_PASS_TIMEOUT_SECONDS = 7 * 60  # the pass is due 5 minutes after the restart
GC_VMODULE = [{"filePattern": "kubelet", "verbosity": 4}, {"filePattern": "image_gc_manager", "verbosity": 5}]
KUBELET_DEFAULTS = KubeletOptions(
    image_gc_high_threshold_percent=85,
    image_gc_low_threshold_percent=80,
    config_overrides={"logging": {"vmodule": GC_VMODULE}},
)
GC_OUTCOME = re.compile(r'"Image garbage collection (succeeded|failed[^"]*)"')
REMOVED = re.compile(r'"Removing image to free bytes" imageID="(sha256:[0-9a-f]{64})"')
_T = TypeVar("_T")


@dataclass
class Warmer:
    """The agent CLI on one node: its config (only the budget differs) and ``agent --once`` runs."""

    node: NodeCluster
    config: Path

    @classmethod
    def on(cls, node: NodeCluster, registry: RunningRegistry, workdir: Path, **budget: float) -> Warmer:
        workdir.mkdir()
        overrides = {"budget": budget} if budget else {}
        config = agent_config(node.containerd, [registry.host], workdir, **overrides)
        path = workdir / "agent.yaml"
        path.write_text(json.dumps(config))
        return cls(node, path)

    def warm(self, *models: tuple[PushedImage, int]) -> subprocess.CompletedProcess[str]:
        """``prefetcher agent --once`` with these models and priorities; fails on a failed pull."""
        models_file = self.config.with_name("models.yaml")
        models_file.write_text(json.dumps({"models": [{"uri": m.uri, "priority": p} for m, p in models]}))
        command = [sys.executable, "-m", "prefetcher", "agent", "--config", str(self.config)]
        result = subprocess.run(
            [*command, "--models", str(models_file), "--once"],
            capture_output=True,
            text=True,
            timeout=AGENT_TIMEOUT_SECONDS,
            check=False,
        )
        assert result.returncode == 0, f"{self.node.node_name}:\n{result.stdout}\n{result.stderr}"
        return result

    def present(self, *models: PushedImage) -> set[PushedImage]:
        """Which of ``models`` the node's containerd holds (CRI ListImages)."""
        refs = self.node.containerd.image_refs()
        return {m for m in models if m.ref in refs}

    def used_percent(self) -> float:
        return self.node.image_fs_usage().used_percent


def on_both(action: Callable[[Warmer], _T], warmers: tuple[Warmer, Warmer]) -> list[_T]:
    """Run ``action`` on both nodes at once."""
    with ThreadPoolExecutor(max_workers=len(warmers)) as pool:
        return list(pool.map(action, warmers))


def kubelet_log_since(node: NodeCluster, offset: int) -> str:
    with node.kubelet.paths.log.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def periodic_gc_outcome(log: str) -> str | None:
    """The outcome line of the pass after the one at start-up (``log`` begins at the restart)."""
    outcomes = [line for line in log.splitlines() if GC_OUTCOME.search(line)]
    return outcomes[1] if len(outcomes) > 1 else None


def restart_and_await_gc(nodes: tuple[NodeCluster, ...]) -> list[str]:
    """Restart each kubelet, wait for its periodic GC pass; each one's log since the restart."""
    offsets = [node.kubelet.paths.log.stat().st_size for node in nodes]
    for node in nodes:  # not from a worker thread: kubelet gets SIGKILL when its starting thread ends
        node.restart_kubelet()

    def logs() -> list[str]:
        return [kubelet_log_since(node, offset) for node, offset in zip(nodes, offsets, strict=True)]

    def passed() -> list[str] | None:
        for node in nodes:
            assert not node.kubelet.daemon.exited(), f"kubelet exited:\n{node.kubelet.log_tail()}"
        current = logs()
        return current if all(periodic_gc_outcome(log) for log in current) else None

    try:
        return eventually(
            passed, timeout_seconds=GC_PASS_TIMEOUT_SECONDS, interval_seconds=2, what="GC passes"
        )
    except AssertionError as err:
        raise AssertionError("\n".join([str(err), *(node.log_tails() for node in nodes)])) from None


def test_kubelet_gc_removes_a_warm_model_over_its_threshold_and_none_under_the_default_budget(
    node_cluster_factory: NodeClusterFactory, registry: RunningRegistry, tmp_path: Path
) -> None:
    a, b, c = (
        push_modelcar(registry, f"gc/model-{name}", model_size_bytes=MODEL_MIB * MIB, seed=seed)
        for name, seed in (("a", 7101), ("b", 7102), ("c", 7103))
    )
    nodes = [node_cluster_factory(KUBELET_DEFAULTS, image_fs_mb=IMAGE_FS_MB) for _ in range(2)]
    over = Warmer.on(nodes[0], registry, tmp_path / "over", maxUsagePercent=99)
    default = Warmer.on(nodes[1], registry, tmp_path / "default")
    warmers = (over, default)
    for warmer in warmers:
        config = warmer.node.kubelet_config()
        gc = (config["imageGCHighThresholdPercent"], config["imageGCLowThresholdPercent"])
        assert gc == (85, 80) and config["imageMinimumGCAge"] == "2m0s", config
        assert config["logging"]["vmodule"] == GC_VMODULE, config["logging"]
        assert config["evictionHard"]["imagefs.available"] == "0%", "eviction would act before GC"

    on_both(lambda w: w.warm((a, 30)), warmers)
    results = on_both(lambda w: w.warm((a, 30), (b, 20), (c, 10)), warmers)

    before = [w.used_percent() for w in warmers]
    assert over.present(a, b, c) == {a, b, c}, results[0].stdout
    assert before[0] > 85, f"budget 99 %: three models should pass kubelet's threshold: {before[0]:.1f} %"
    assert default.present(a, b, c) == {a, b}, results[1].stdout
    skips = [line.strip() for line in results[1].stdout.splitlines() if f"skip     {c.ref}  (budget)" in line]
    assert skips, results[1].stdout
    assert before[1] <= 80, f"the default budget was exceeded: {before[1]:.1f} %"

    started = time.monotonic()
    logs = restart_and_await_gc((over.node, default.node))
    print(f"\nGC pass {time.monotonic() - started:.0f} s after the restart; before {before}; {skips[0]}")

    removed = {a, b, c} - over.present(a, b, c)
    assert removed, f"kubelet removed none of the warm models at {before[0]:.1f} %:\n{logs[0]}"
    assert {m.config_digest for m in removed} <= set(REMOVED.findall(logs[0])), logs[0]

    def freed() -> float | None:
        used = over.used_percent()
        return used if used <= 80 else None

    after = over.node.wait_for(freed, what="kubelet to free down to its low threshold (80 %)")
    print(f"budget 99 %: {before[0]:.1f} % -> {after:.1f} %, removed {sorted(m.repository for m in removed)}")

    assert "succeeded" in str(periodic_gc_outcome(logs[1])), logs[1]
    assert default.present(a, b, c) == {a, b}, "kubelet removed a warm model under the default budget"
    assert not REMOVED.search(logs[1]), logs[1]
    assert default.used_percent() == pytest.approx(before[1], abs=0.5)
    for reason in ("ImageGCFailed", "FreeDiskSpaceFailed"):
        assert default.node.events(reason) == [], f"{reason} on the node under the default budget"
