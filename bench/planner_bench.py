"""Time of one ``plan(...)`` over a large node: 10,000 desired models, 2,000 cached images.

Inputs: 10,000 desired models (priorities 0-99, 1-20 GiB each, 500 references listed twice by
different sources so merging has work to do); 2,000 cached images, 1,000 of them the images of
desired models (warm) and 1,000 not desired; half of the cached images (1,000) were pulled by the
agent (managed), 200 of those in use by containers; a 10 TiB image filesystem 55 % used with an
80 % budget, so the plan has pulls, evictions (expired and to make room) and budget skips.

The baseline, timed in the same run on the same inputs, is the least any planner must do: build
the set of cached references and sort the desired models by priority. The ratio is the planner's
cost over that floor. Each figure is the median of ``--runs`` runs after one warm-up run.

    .venv/bin/python bench/planner_bench.py [--runs 15]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prefetcher.core.model import Budget, CachedImage, DesiredModel, DiskState, ManagedImage  # noqa: E402
from prefetcher.core.planner import plan  # noqa: E402
from tests.support.planner_inputs import GIB, cached_of, managed_of, model  # noqa: E402

DESIRED = 10_000
DUPLICATED = 500
CACHED_DESIRED = 1_000
CACHED_OTHER = 1_000
IN_USE = 200
NOW = 1_000_000.0
TARGET_MS = 50.0


def inputs(seed: int = 7) -> dict[str, object]:
    """The planner's arguments for the node described in the module docstring."""
    rng = random.Random(seed)
    unique = [
        model(f"m{i:05d}", priority=rng.randrange(100), size=rng.randint(1, 20) * GIB) for i in range(DESIRED)
    ]
    desired = unique + [
        DesiredModel(m.ref, rng.randrange(100), m.size_bytes, (f"other source of {m.ref.repository}",))
        for m in rng.sample(unique, DUPLICATED)
    ]
    rng.shuffle(desired)
    stale = [model(f"old{i:05d}", size=rng.randint(1, 20) * GIB) for i in range(CACHED_OTHER)]
    warm = rng.sample(unique, CACHED_DESIRED)
    cached: list[CachedImage] = [cached_of(m) for m in warm] + [cached_of(m) for m in stale]
    managed_models = warm[: CACHED_DESIRED // 2] + stale[: CACHED_OTHER // 2]
    managed: dict[str, ManagedImage] = {
        m.ref.canonical(): managed_of(m, last_desired_at=rng.uniform(0, NOW)) for m in managed_models
    }
    in_use = frozenset(image.id for image in rng.sample(cached, IN_USE))
    disk = DiskState(total_bytes=10 * 1024 * GIB, used_bytes=int(10 * 1024 * GIB * 0.55))
    budget = Budget(max_usage_percent=80.0, eviction_grace_seconds=3600.0)
    return {
        "desired": desired,
        "cached": cached,
        "in_use": in_use,
        "disk": disk,
        "budget": budget,
        "managed": managed,
    }


def run_plan(args: dict[str, object]) -> object:
    return plan(
        args["desired"],  # type: ignore[arg-type]
        args["cached"],  # type: ignore[arg-type]
        args["in_use"],  # type: ignore[arg-type]
        args["disk"],  # type: ignore[arg-type]
        args["budget"],  # type: ignore[arg-type]
        now=NOW,
        managed=args["managed"],  # type: ignore[arg-type]
    )


def run_baseline(args: dict[str, object]) -> object:
    cached: list[CachedImage] = args["cached"]  # type: ignore[assignment]
    desired: list[DesiredModel] = args["desired"]  # type: ignore[assignment]
    refs = {ref for image in cached for ref in image.refs}
    order = sorted(desired, key=lambda m: (-m.priority, m.ref.canonical()))
    return refs, order


def median_ms(fn: Callable[[dict[str, object]], object], args: dict[str, object], runs: int) -> float:
    fn(args)  # warm-up: caches, allocator
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(args)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    opts = parser.parse_args()
    args = inputs()
    result = run_plan(args)
    print(
        f"inputs: {len(args['desired'])} desired entries, {len(args['cached'])} cached images, "  # type: ignore[arg-type]
        f"{len(args['managed'])} managed, {len(args['in_use'])} in use"  # type: ignore[arg-type]
    )
    print(
        f"plan: {len(result.pulls)} pulls, {len(result.evictions)} evictions, "  # type: ignore[attr-defined]
        f"{len(result.skips)} skips, {len(result.warm)} warm"  # type: ignore[attr-defined]
    )
    # Interleave so both see the same background load.
    planner_runs, baseline_runs = [], []
    for _ in range(3):
        baseline_runs.append(median_ms(run_baseline, args, opts.runs))
        planner_runs.append(median_ms(run_plan, args, opts.runs))
    planner_ms, baseline_ms = statistics.median(planner_runs), statistics.median(baseline_runs)
    print(f"baseline (cached-ref set + priority sort): {baseline_ms:.1f} ms (median)")
    print(f"plan(...):                                 {planner_ms:.1f} ms (median)")
    print(f"ratio plan/baseline: {planner_ms / baseline_ms:.2f}x")
    verdict = "met" if planner_ms <= TARGET_MS else "MISSED"
    print(f"target <= {TARGET_MS:.0f} ms: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
