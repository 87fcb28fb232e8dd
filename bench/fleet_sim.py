"""Many nodes, one registry: a discrete-event simulation of a fleet pulling one model.

N nodes want one model of S bytes at once (or spread over ``--arrival-spread-s``, seeded). Three
strategies:

* ``a`` all at once, direct: every node pulls from the origin when it wants the model;
* ``b`` paced, direct: at most ``--seed-pulls`` nodes pull until one node holds the model warm,
  then at most ``--max-concurrent`` at a time (``fleet.seedPulls``, ``fleet.maxConcurrentPulls``),
  all from the origin;
* ``c`` paced through a pull-through cache or P2P mirror: the seed pulls go through the mirror,
  which fetches each byte from the origin ``--mirror-fetches`` times (1: it stores what it streams,
  as Distribution 3 and Dragonfly do; Distribution 2.8 fetches the blob again to store it: 2);
  later pulls are served by the mirror alone.

Bandwidth is a fluid shared fairly: a node pulls at most ``--node-mb-s`` (its own throughput:
network, decompression, unpack); the origin's ``--origin-mb-s`` and the mirror's ``--mirror-mb-s``
are split evenly among the pulls they serve at that moment. Between two events (a pull finishes,
a node starts wanting the model) every rate is constant, so the simulation steps from event to
event; it is pure and deterministic (``simulate`` takes a seed, no clock).

Turns are decided by the agent's own pacing core, ``prefetcher.core.pacing.pace``: at each event
every waiting node, in the order it started wanting the model, asks for a turn with the slot
Leases the pulling nodes hold (renewed while they make progress, released when they are warm) and
the model warm elsewhere once one node is; strategy ``a`` is pacing off. So the simulation paces
exactly as the agent does, slot for slot. The agent's deadline (``fleet.maxWaitSeconds``, after
which a node pulls anyway) is off unless ``--max-wait-s`` is given: at the default 3600 s a large
fleet's paced pulls would mostly start at the deadline, and the figures compare pacing itself.

Printed: per strategy, for 500 nodes x 140 GB by default, the time to the first, median, p99 and
last warm node and the origin egress, next to the published anchors (Dragonfly, Kraken), and, with
``--measured FILE``, the real run the parameters were measured in, simulated again at its size.
The file (written by the real fleet bench; every field optional but ``nodes`` and ``modelBytes``)::

    {"nodes": 4, "modelBytes": 1073741824,
     "nodeMBs": 180.0, "originMBs": 50.0, "mirrorMBs": 400.0,      # the parameters measured
     "seedPulls": 1, "maxConcurrentPulls": 4, "mirrorFetches": 1,
     "measured": {"a": {"allWarmSeconds": 86.1, "originEgressBytes": 4294967296},
                  "b": {...}, "c": {...}}}                         # what the real run saw

Flags given on the command line win over the file's parameters. Defaults (no file): a node pulls
at 500 MB/s, the origin serves 1250 MB/s (10 Gbit/s), the mirror 12500 MB/s (100 Gbit/s in all).

    .venv/bin/python bench/fleet_sim.py [--nodes 500] [--size-gb 140] [--measured FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefetcher.core.pacing import Candidate, LeaseRecord, PacingPolicy, pace

MB, GB = 10**6, 10**9
MODEL = Candidate("origin.example/models/m@sha256:" + "0" * 64, "sha256:" + "0" * 64, "origin.example")
STRATEGIES = {"a": "all at once, direct", "b": "paced, direct", "c": "paced, through a mirror"}
ANCHORS = (
    "Dragonfly (published): 130 GB to 200 nodes, about 130 GB from the origin instead of 26 TB",
    "Kraken (published): 3 GB to 2,600 hosts, p99 18 s",
)


@dataclass(frozen=True)
class Params:
    """One fleet: its size, the model, bandwidths in bytes per second, pacing and arrivals."""

    nodes: int = 500
    size_bytes: int = 140 * GB
    node_bps: float = 500 * MB
    origin_bps: float = 1250 * MB
    mirror_bps: float = 12500 * MB
    seed_pulls: int = 1
    max_concurrent: int = 10
    mirror_fetches: int = 1
    arrival_spread_seconds: float = 0.0
    seed: int = 0
    max_wait_seconds: float = math.inf


@dataclass(frozen=True)
class Result:
    """When nodes became warm (seconds, sorted) and the bytes the origin sent."""

    strategy: str
    warm_seconds: tuple[float, ...]
    origin_bytes: float

    def quantile(self, q: float) -> float:
        """The time by which a fraction ``q`` of the nodes were warm."""
        return self.warm_seconds[max(0, math.ceil(q * len(self.warm_seconds)) - 1)]


def simulate(params: Params, strategy: str) -> Result:
    """Run one strategy to the last warm node."""
    rng = random.Random(params.seed)
    arrivals = sorted(rng.uniform(0, params.arrival_spread_seconds) for _ in range(params.nodes))
    policy = _policy(params, strategy)
    since: dict[int, float] = {}  # waiting node -> when it started wanting the model
    active: dict[int, float] = {}  # pulling node -> bytes still to pull
    leases: dict[str, LeaseRecord] = {}  # slot -> the pulling node that holds it
    warm: list[float] = []
    now, origin, mirror_filled = 0.0, 0.0, 0.0
    while len(warm) < params.nodes:
        while arrivals and arrivals[0] <= now:
            node = params.nodes - len(arrivals)
            since[node] = arrivals.pop(0)
        leases = {name: replace(record, seen_at=now) for name, record in leases.items()}  # renewed
        for node, started in list(since.items()):  # in the order the nodes started waiting
            turn = _turn(policy, node, started, leases=leases, any_warm=bool(warm), now=now)
            if turn is None:
                break  # a later node sees the same slots taken and has waited less
            leases.update((name, LeaseRecord(name, str(node), "1", now, math.inf)) for name in turn)
            active[node] = float(params.size_bytes)
            del since[node]
        rate, from_origin = _rates(params, strategy, len(active), bool(warm))
        step = min((left / rate for left in active.values()), default=float("inf"))
        if arrivals:
            step = min(step, arrivals[0] - now)
        if since:  # the first waiting node's deadline is an event too
            step = min(step, max(min(since.values()) + params.max_wait_seconds - now, 0.0))
        now += step
        moved = rate * step
        if from_origin and strategy == "c":  # the mirror fetches what it streams, once per fetch
            most = params.size_bytes - min(active.values()) + moved
            origin += (min(most, params.size_bytes) - mirror_filled) * params.mirror_fetches
            mirror_filled = min(most, params.size_bytes)
        elif from_origin:
            origin += moved * len(active)
        active = {node: left - moved for node, left in active.items()}
        for node in [n for n, left in active.items() if left <= 1e-6 * params.size_bytes]:
            warm.append(now)
            del active[node]  # warm, published, and its slots released
            leases = {name: r for name, r in leases.items() if r.holder != str(node)}
    return Result(strategy, tuple(warm), origin)


def _policy(params: Params, strategy: str) -> PacingPolicy:
    """The ``fleet`` settings of every node; strategy ``a`` is pacing off."""
    return PacingPolicy(
        enabled=strategy != "a",
        seed_pulls=params.seed_pulls,
        max_concurrent_pulls=params.max_concurrent,
        max_wait_seconds=params.max_wait_seconds,
    )


def _turn(
    policy: PacingPolicy,
    node: int,
    started: float,
    *,
    leases: dict[str, LeaseRecord],
    any_warm: bool,
    now: float,
) -> tuple[str, ...] | None:
    """The slots ``node`` takes for its turn (none when unpaced or overdue), or None: it waits."""
    decided = pace(
        [MODEL],
        leases=leases,
        warm=frozenset({MODEL.key}) if any_warm else frozenset(),
        policy=policy,
        node=str(node),
        now=now,
        waiting_since={MODEL.ref: started},
    )
    return decided.turns[0].leases if decided.turns else None


def _rates(params: Params, strategy: str, pulling: int, any_warm: bool) -> tuple[float, bool]:
    """Each pulling node's rate, and whether its bytes come from the origin."""
    if not pulling:
        return 1.0, False
    if strategy == "c" and any_warm:
        return min(params.node_bps, params.mirror_bps / pulling), False
    if strategy == "c":  # the mirror streams the seed pulls one origin fetch of the model
        return min(params.node_bps, params.origin_bps, params.mirror_bps / pulling), True
    return min(params.node_bps, params.origin_bps / pulling), True


def _row(result: Result, baseline: Result) -> str:
    cells = [result.quantile(q) for q in (0.0, 0.5, 0.99, 1.0)]
    times = "  ".join(f"{t:9.1f}" for t in cells)
    ratio = result.warm_seconds[-1] / baseline.warm_seconds[-1]
    egress = f"{result.origin_bytes / GB:12,.1f}"
    return f"{result.strategy}  {STRATEGIES[result.strategy]:26s} {times}  {ratio:5.2f}  {egress}"


def report(params: Params, title: str) -> list[Result]:
    """Print every strategy's row for ``params``; return the results."""
    print(f"\n{title}: {params.nodes} nodes x {params.size_bytes / GB:g} GB")
    heads = "  ".join(f"{h:>9s}" for h in ("first", "median", "p99", "all warm"))
    print(f"   {'strategy (seconds to warm)':26s} {heads}  vs a   origin (GB)")
    results = [simulate(params, s) for s in STRATEGIES]
    for result in results:
        print(_row(result, results[0]))
    return results


def calibrate(params: Params, measured: dict[str, Any]) -> None:
    """The real run's figures beside the simulation of that run, and their ratios."""
    print(f"\ncalibration: the real run, {params.nodes} nodes x {params.size_bytes / GB:g} GB, simulated")
    print("   real all-warm (s)  sim all-warm (s)  sim/real   real origin (GB)  sim origin (GB)")
    for strategy, real in sorted(measured.items()):
        if strategy not in STRATEGIES:
            continue
        sim = simulate(params, strategy)
        seconds, egress = real.get("allWarmSeconds"), real.get("originEgressBytes")
        ratio = f"{sim.warm_seconds[-1] / seconds:8.2f}" if seconds else "       -"
        real_s = f"{seconds:17.1f}" if seconds else f"{'-':>17s}"
        real_gb = f"{egress / GB:17.2f}" if egress is not None else f"{'-':>17s}"
        sim_s, sim_gb = f"{sim.warm_seconds[-1]:16.1f}", f"{sim.origin_bytes / GB:15.2f}"
        print(f"{strategy}  {real_s}  {sim_s}  {ratio}  {real_gb}  {sim_gb}")


def params_from(args: argparse.Namespace, file: dict[str, Any]) -> Params:
    """Flags over the measured file over the defaults."""
    spread, max_wait = args.arrival_spread_s, args.max_wait_s
    base = Params(seed=args.seed, arrival_spread_seconds=spread, max_wait_seconds=max_wait)
    keys = {
        "node_bps": ("node_mb_s", "nodeMBs", MB),
        "origin_bps": ("origin_mb_s", "originMBs", MB),
        "mirror_bps": ("mirror_mb_s", "mirrorMBs", MB),
        "seed_pulls": ("seed_pulls", "seedPulls", 1),
        "max_concurrent": ("max_concurrent", "maxConcurrentPulls", 1),
        "mirror_fetches": ("mirror_fetches", "mirrorFetches", 1),
    }
    chosen: dict[str, Any] = {}
    for field, (flag, key, unit) in keys.items():
        value = getattr(args, flag)
        value = file.get(key) if value is None else value
        if value is not None:
            chosen[field] = type(getattr(base, field))(value * unit)
    return replace(base, **chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--size-gb", type=float, default=140.0)
    parser.add_argument("--measured", type=Path, help="JSON of the real run (see the module docstring)")
    for flag in ("node-mb-s", "origin-mb-s", "mirror-mb-s"):
        parser.add_argument(f"--{flag}", type=float)
    for flag in ("seed-pulls", "max-concurrent", "mirror-fetches"):
        parser.add_argument(f"--{flag}", type=int)
    parser.add_argument("--arrival-spread-s", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-wait-s", type=float, default=math.inf, help="fleet.maxWaitSeconds (off)")
    args = parser.parse_args(argv)
    file = json.loads(args.measured.read_text()) if args.measured else {}
    params = params_from(args, file)
    print(
        f"parameters: node {params.node_bps / MB:g} MB/s, origin {params.origin_bps / MB:g} MB/s, "
        f"mirror {params.mirror_bps / MB:g} MB/s, seedPulls {params.seed_pulls}, "
        f"maxConcurrentPulls {params.max_concurrent}, mirror fetches {params.mirror_fetches}"
    )
    report(replace(params, nodes=args.nodes, size_bytes=int(args.size_gb * GB)), "fleet")
    report(replace(params, nodes=200, size_bytes=130 * GB), "at Dragonfly's anchor")
    report(replace(params, nodes=2600, size_bytes=3 * GB), "at Kraken's anchor")
    print("\npublished anchors:\n  " + "\n  ".join(ANCHORS))
    if file:
        real = replace(params, nodes=int(file["nodes"]), size_bytes=int(file["modelBytes"]))
        calibrate(real, file.get("measured") or {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
