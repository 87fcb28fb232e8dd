"""Time of one ``plan(...)`` over a large node: 10,000 desired models, 2,000 cached images.

Inputs: 10,000 desired models (priorities 0-99, 1-20 GiB each, 500 references listed twice by
different sources so merging has work to do); 2,000 cached images, 1,000 of them the images of
desired models (warm) and 1,000 not desired; half of the cached images (1,000) were pulled by the
agent (managed), 200 of those in use by containers; a 10 TiB image filesystem 55 % used with an
80 % budget, so the plan has pulls, evictions (expired and to make room) and budget skips.

The baseline, timed in the same run on the same inputs, is the least any planner must do: build
the set of cached references and sort the desired models by priority. The ratio is the planner's
cost over that floor. ``--compare LABEL=DIR`` also times the planner of another checkout of this
repository (``git worktree add DIR main``, or ``git archive``) on the same inputs, interleaved,
after checking that both planners give the same plan on these inputs and on variants with
back-offs and pulls in flight (seeds 7-9); the speed-up is printed as a ratio. Each figure is the
median of ``--runs`` runs after one warm-up run, wall clock and CPU time of this process.

    .venv/bin/python bench/planner_bench.py [--runs 15] [--compare before=DIR]
"""

from __future__ import annotations

import argparse
import importlib
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.webhook_latency import checkouts  # noqa: E402
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


Planner = Callable[..., object]


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


def with_waits(args: dict[str, object], seed: int) -> dict[str, object]:
    """``args`` with some models backing off (some of those past their time) and some in flight."""
    rng = random.Random(seed)
    refs = sorted({m.ref.canonical() for m in args["desired"]})  # type: ignore[attr-defined]
    backoff = {ref: NOW + rng.uniform(-600, 600) for ref in rng.sample(refs, 300)}
    backoff.update(dict.fromkeys(rng.sample(refs, 20), float("inf")))
    in_flight = {ref: rng.randint(1, 20) * GIB for ref in rng.sample(refs, 50)}
    return {**args, "backoff_until": backoff, "in_flight": in_flight}


def call(planner: Planner, args: dict[str, object]) -> object:
    """One plan over ``args`` (the bench's inputs, optionally with back-offs and pulls in flight)."""
    extra = {key: args[key] for key in ("backoff_until", "in_flight") if key in args}
    return planner(
        args["desired"],
        args["cached"],
        args["in_use"],
        args["disk"],
        args["budget"],
        now=NOW,
        managed=args["managed"],
        **extra,
    )


def run_baseline(args: dict[str, object]) -> object:
    cached: list[CachedImage] = args["cached"]  # type: ignore[assignment]
    desired: list[DesiredModel] = args["desired"]  # type: ignore[assignment]
    refs = {ref for image in cached for ref in image.refs}
    order = sorted(desired, key=lambda m: (-m.priority, m.ref.canonical()))
    return refs, order


def planner_of(checkout: Path) -> Planner:
    """The ``plan`` of another checkout, imported beside this one's (its modules set aside after)."""
    ours = {name: module for name, module in sys.modules.items() if name.partition(".")[0] == "prefetcher"}
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, str(checkout))
    try:
        module = importlib.import_module("prefetcher.core.planner")
    finally:
        sys.path.remove(str(checkout))
        for name in [name for name in sys.modules if name.partition(".")[0] == "prefetcher"]:
            del sys.modules[name]
        sys.modules.update(ours)
    if not Path(module.__file__ or "").is_relative_to(checkout):
        raise SystemExit(f"--compare: {checkout} did not provide prefetcher.core.planner")
    planner: Planner = module.plan
    return planner


def same_plans(planner: Planner, args: dict[str, object]) -> bool:
    """Whether ``planner`` and this checkout's give the same plan on the bench's inputs and variants.

    Compared by ``repr``: the two checkouts' ``Plan`` classes are distinct, so ``==`` is always False.
    """
    cases = [args, *(with_waits(inputs(seed), seed) for seed in (7, 8, 9))]
    return all(repr(call(plan, case)) == repr(call(planner, case)) for case in cases)


def medians_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall-clock and CPU milliseconds of ``runs`` calls after one warm-up call."""
    fn()  # warm-up: caches, allocator
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        cpu.append((time.process_time() - start_cpu) * 1000)
        wall.append((time.perf_counter() - start) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR")
    opts = parser.parse_args()
    args = inputs()
    result = call(plan, args)
    print(
        f"inputs: {len(args['desired'])} desired entries, {len(args['cached'])} cached images, "  # type: ignore[arg-type]
        f"{len(args['managed'])} managed, {len(args['in_use'])} in use"  # type: ignore[arg-type]
    )
    print(
        f"plan: {len(result.pulls)} pulls, {len(result.evictions)} evictions, "  # type: ignore[attr-defined]
        f"{len(result.skips)} skips, {len(result.warm)} warm"  # type: ignore[attr-defined]
    )
    timed: dict[str, Callable[[], object]] = {
        "baseline": lambda: run_baseline(args),
        "plan": lambda: call(plan, args),
    }
    for label, checkout in checkouts(parser, opts.compare, reserved=("baseline", "plan")).items():
        other = planner_of(checkout)
        verdict = "same plan" if same_plans(other, args) else "DIFFERENT PLANS"
        print(f"{label} ({checkout}): {verdict} on the bench inputs and 3 variants with waits")
        timed[label] = lambda other=other: call(other, args)  # type: ignore[misc]
    # Interleave so every planner sees the same background load.
    batches: dict[str, list[tuple[float, float]]] = {label: [] for label in timed}
    for _ in range(3):
        for label, fn in timed.items():
            batches[label].append(medians_ms(fn, opts.runs))
    wall = {label: statistics.median(w for w, _ in runs) for label, runs in batches.items()}
    cpu = {label: statistics.median(c for _, c in runs) for label, runs in batches.items()}
    others = [label for label in timed if label not in ("baseline", "plan")]
    names = {"baseline": "baseline (cached-ref set + priority sort)", "plan": "plan(...)"}
    names.update({label: f"plan(...) of {label}" for label in others})
    for label, name in names.items():
        print(f"{name + ':':43} {wall[label]:.1f} ms (median; CPU {cpu[label]:.1f} ms)")
    print(f"ratio plan/baseline: {wall['plan'] / wall['baseline']:.2f}x")
    for label in others:
        wall_ratio, cpu_ratio = wall[label] / wall["plan"], cpu[label] / cpu["plan"]
        print(f"speed-up over {label}: {wall_ratio:.2f}x wall, {cpu_ratio:.2f}x CPU")
    verdict = "met" if wall["plan"] <= TARGET_MS else "MISSED"
    print(f"target <= {TARGET_MS:.0f} ms: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
