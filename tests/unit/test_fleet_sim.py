"""Invariants of bench/fleet_sim.py: origin egress per strategy, monotone times, determinism."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

PATH = Path(__file__).resolve().parents[2] / "bench" / "fleet_sim.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_sim", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fleet_sim"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


sim = _load()
GB, MB = sim.GB, sim.MB
SMALL = sim.Params(
    nodes=20, size_bytes=10 * GB, node_bps=500 * MB, origin_bps=1000 * MB, mirror_bps=4000 * MB
)
fleets = st.builds(
    sim.Params,
    nodes=st.integers(1, 40),
    size_bytes=st.integers(1, 200).map(lambda g: g * GB),
    node_bps=st.integers(10, 2000).map(lambda m: m * MB),
    origin_bps=st.integers(10, 5000).map(lambda m: m * MB),
    mirror_bps=st.integers(10, 20000).map(lambda m: m * MB),
    seed_pulls=st.integers(1, 3),
    max_concurrent=st.integers(1, 50),
    arrival_spread_seconds=st.sampled_from((0.0, 300.0)),
    seed=st.integers(0, 9),
)


@settings(max_examples=60, deadline=None)
@given(fleets)
def test_direct_strategies_send_the_model_once_per_node_and_the_mirror_once(params: object) -> None:
    size, nodes = params.size_bytes, params.nodes  # type: ignore[attr-defined]
    for strategy in ("a", "b"):
        assert sim.simulate(params, strategy).origin_bytes == pytest.approx(nodes * size, rel=1e-6)
    assert sim.simulate(params, "c").origin_bytes == pytest.approx(size, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(fleets)
def test_every_node_becomes_warm_in_order_and_the_run_is_deterministic(params: object) -> None:
    for strategy in sim.STRATEGIES:
        result = sim.simulate(params, strategy)
        assert len(result.warm_seconds) == params.nodes  # type: ignore[attr-defined]
        assert list(result.warm_seconds) == sorted(result.warm_seconds)
        assert result == sim.simulate(params, strategy)


@settings(max_examples=40, deadline=None)
@given(fleets, st.sampled_from(("node_bps", "origin_bps", "mirror_bps")), st.integers(2, 10))
def test_more_bandwidth_never_makes_all_warm_later(params: object, field: str, factor: int) -> None:
    faster = replace(params, **{field: getattr(params, field) * factor})  # type: ignore[type-var]
    for strategy in sim.STRATEGIES:
        slow, fast = sim.simulate(params, strategy), sim.simulate(faster, strategy)
        assert fast.warm_seconds[-1] <= slow.warm_seconds[-1] * (1 + 1e-9)


def test_an_origin_bound_fleet_all_at_once_takes_n_times_size_over_origin_bandwidth() -> None:
    result = sim.simulate(SMALL, "a")
    assert result.warm_seconds[-1] == pytest.approx(20 * 10 * GB / (1000 * MB))
    assert result.warm_seconds[0] == result.warm_seconds[-1]  # fair share: nobody is warm early


def test_pacing_warms_the_first_node_at_its_own_speed() -> None:
    result = sim.simulate(SMALL, "b")
    assert result.warm_seconds[0] == pytest.approx(10 * GB / (500 * MB))


def test_a_cache_that_fetches_twice_costs_twice_the_model() -> None:
    assert sim.simulate(replace(SMALL, mirror_fetches=2), "c").origin_bytes == pytest.approx(20 * GB)


def test_the_measured_file_fills_parameters_and_the_flags_win(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    measured = {
        "nodes": 4,
        "modelBytes": GB,
        "nodeMBs": 100.0,
        "originMBs": 50.0,
        "mirrorMBs": 400.0,
        "measured": {"a": {"allWarmSeconds": 80.0, "originEgressBytes": 4 * GB}},
    }
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(measured))
    assert sim.main(["--measured", str(path), "--origin-mb-s", "25", "--nodes", "8", "--size-gb", "1"]) == 0
    out = capsys.readouterr().out
    assert "node 100 MB/s, origin 25 MB/s, mirror 400 MB/s" in out
    calibration = out.split("calibration:")[1].splitlines()
    # 4 nodes x 1 GB from a 25 MB/s origin: 160 s simulated against 80 s measured
    assert calibration[2].split()[:4] == ["a", "80.0", "160.0", "2.00"]


def test_turns_come_from_the_agents_pacing_core_deadline_included() -> None:
    # maxWaitSeconds is the core's rule, not the simulation's: at 0 every node is overdue at once.
    unpaced = sim.simulate(SMALL, "a")
    assert sim.simulate(replace(SMALL, max_wait_seconds=0.0), "b").warm_seconds == unpaced.warm_seconds
    wide = replace(SMALL, origin_bps=100_000 * MB)  # each node at its own 500 MB/s: 20 s a pull
    paced, deadline = sim.simulate(wide, "b"), sim.simulate(replace(wide, max_wait_seconds=30.0), "b")
    assert paced.warm_seconds[-1] == pytest.approx(60.0)  # the seed, then two rounds of ten
    assert deadline.warm_seconds[-1] == pytest.approx(50.0)  # the second round started at 30 s
    assert deadline.warm_seconds[:11] == paced.warm_seconds[:11]  # turns given before the deadline


def test_with_more_seeds_than_turns_the_simulation_keeps_the_agents_slot_arithmetic() -> None:
    # Three seeds hold slots 0..2. Once the first is warm only slots 0..1 exist, but its slot 0 is
    # free again: the agents give the fourth node that turn at once (a copied "pulling < cap" rule
    # made it wait for the second seed).
    fleet = replace(SMALL, nodes=4, seed_pulls=3, max_concurrent=2, origin_bps=100_000 * MB)
    result = sim.simulate(replace(fleet, arrival_spread_seconds=10.0), "b")
    assert result.warm_seconds[3] == pytest.approx(result.warm_seconds[0] + 20.0)
