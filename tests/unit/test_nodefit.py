"""Node fit as kube-scheduler decides it: selectors, affinity, taints, extended resources, quantities."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from prefetcher.core.nodefit import (
    Constraints,
    NodeInfo,
    Requirement,
    Taint,
    Term,
    Toleration,
    fits,
    node_info_from,
    node_matches_selector,
    requirement_holds,
    tolerates,
)
from prefetcher.core.quantity import format_quantity, parse_quantity
from prefetcher.errors import ConfigError

NODE = NodeInfo(
    "gpu-1",
    {"gpu": "a100", "mem": "80", "zone": "z1"},
    (Taint("nvidia.com/gpu", "present", "NoSchedule"), Taint("soft", "", "PreferNoSchedule")),
    {"nvidia.com/gpu": Fraction(1), "cpu": Fraction(16)},
)
GPU_TOLERATION = Toleration("nvidia.com/gpu", "Exists")


def outcome(constraints: Constraints, node: NodeInfo) -> tuple[bool, str]:
    result = fits(constraints, node)
    return result.ok, result.reason


def on_gpu_node(**constraints: Any) -> Constraints:
    return Constraints(tolerations=(GPU_TOLERATION,), **constraints)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0), ("1", 1), ("+3", 3), ("-2", -2), ("500m", Fraction(1, 2)), ("1.5", Fraction(3, 2)),
        (".5", Fraction(1, 2)), ("5.", 5), ("2k", 2000), ("3M", 3 * 10**6), ("1G", 10**9),
        ("1T", 10**12), ("1P", 10**15), ("1E", 10**18), ("1Ki", 1024), ("1.5Gi", 3 * 2**29),
        ("2Mi", 2 * 2**20), ("1Ti", 2**40), ("1Pi", 2**50), ("1Ei", 2**60), ("1e3", 1000),
        ("1E3", 1000), ("25e-1", Fraction(5, 2)), ("1e+2", 100), ("0.001m", Fraction(1, 10**6)),
    ],
)  # fmt: skip
def test_parse_quantity(text: str, value: Fraction | int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text", ["", " 1", "1 ", "1.2.3", "1KB", "1ki", "1e", "1m3", "Gi", ".", "1e1.5", "1e99999", "0x10"]
)
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [(Fraction(2), "2"), (Fraction(1, 2), "0.5"), (Fraction(-3, 1000), "-0.003"), (Fraction(0), "0")],
)
def test_format_quantity(value: Fraction, text: str) -> None:
    assert format_quantity(value) == text


def test_format_quantity_rejects_repeating_decimals() -> None:
    with pytest.raises(ValueError, match="finite"):
        format_quantity(Fraction(1, 3))


SUFFIXES = {
    "": Fraction(1), "m": Fraction(1, 1000), "k": Fraction(10**3), "M": Fraction(10**6),
    "G": Fraction(10**9), "T": Fraction(10**12), "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
    "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}  # fmt: skip


@given(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.integers(min_value=0, max_value=6),
    st.sampled_from(sorted(SUFFIXES)),
)
def test_quantity_round_trips(mantissa: int, scale: int, suffix: str) -> None:
    number = Decimal(mantissa).scaleb(-scale)
    text = f"{number:f}{suffix}"
    value = parse_quantity(text)
    assert value == Fraction(number) * SUFFIXES[suffix]
    assert parse_quantity(format_quantity(value)) == value
    assert parse_quantity(f"{number:f}e{-scale}") == Fraction(mantissa, 10 ** (2 * scale))


@pytest.mark.parametrize(
    ("requirement", "holds"),
    [
        (Requirement("gpu", "In", ("a100", "h100")), True),
        (Requirement("gpu", "In", ("h100",)), False),
        (Requirement("missing", "In", ("x",)), False),
        (Requirement("gpu", "NotIn", ("h100",)), True),
        (Requirement("gpu", "NotIn", ("a100",)), False),
        (Requirement("missing", "NotIn", ("x",)), True),
        (Requirement("gpu", "Exists"), True),
        (Requirement("missing", "Exists"), False),
        (Requirement("gpu", "DoesNotExist"), False),
        (Requirement("missing", "DoesNotExist"), True),
        (Requirement("mem", "Gt", ("40",)), True),
        (Requirement("mem", "Gt", ("80",)), False),
        (Requirement("mem", "Lt", ("100",)), True),
        (Requirement("mem", "Lt", ("-5",)), False),
        (Requirement("gpu", "Gt", ("1",)), False),
        (Requirement("mem", "Gt", ("4e1",)), False),
        (Requirement("mem", "Gt", ("1", "2")), False),
        (Requirement("missing", "Lt", ("1",)), False),
        (Requirement("gpu", "Equals", ("a100",)), False),
    ],
)
def test_requirement_operators(requirement: Requirement, holds: bool) -> None:
    assert requirement_holds(requirement, NODE.labels) is holds
    ok = fits(on_gpu_node(required_terms=(Term((requirement,)),)), NODE).ok
    assert ok is holds


@pytest.mark.parametrize(
    ("terms", "ok", "reason"),
    [
        ((Term((Requirement("gpu", "In", ("h100",)),)), Term((Requirement("zone", "Exists"),))), True, ""),
        ((Term((Requirement("gpu", "Exists"), Requirement("zone", "In", ("z2",)))),), False,
         "node affinity requires zone In (z2)"),
        ((Term((Requirement("gpu", "In", ("h100",)),)), Term((Requirement("x", "Exists"),))), False,
         "node matches none of 2 required node affinity terms"),
        ((Term(),), False, "node affinity term is empty and matches no node"),
        ((), False, "node matches none of 0 required node affinity terms"),
        ((Term(match_fields=(Requirement("metadata.name", "In", ("gpu-1",)),)),), True, ""),
        ((Term(match_fields=(Requirement("metadata.name", "NotIn", ("gpu-1",)),)),), False,
         "node affinity requires field metadata.name NotIn (gpu-1)"),
        ((Term(match_fields=(Requirement("metadata.uid", "In", ("gpu-1",)),)),), False,
         "node affinity requires field metadata.uid In (gpu-1)"),
        ((Term(match_fields=(Requirement("metadata.name", "Exists"),)),), False,
         "node affinity requires field metadata.name Exists"),
    ],
)  # fmt: skip
def test_required_affinity_terms_are_ored_requirements_anded(
    terms: tuple[Term, ...], ok: bool, reason: str
) -> None:
    assert outcome(on_gpu_node(required_terms=terms), NODE) == (ok, reason)


@pytest.mark.parametrize(
    ("selector", "reason"),
    [
        ((("gpu", "a100"), ("zone", "z1")), ""),
        ((("gpu", "h100"),), "node lacks label gpu=h100"),
        ((("pool", "ml"),), "node lacks label pool=ml"),
    ],
)
def test_node_selector(selector: tuple[tuple[str, str], ...], reason: str) -> None:
    assert outcome(on_gpu_node(node_selector=selector), NODE) == (not reason, reason)


@pytest.mark.parametrize(
    ("toleration", "taint", "tolerated"),
    [
        (Toleration("k", "Equal", "v", "NoSchedule"), Taint("k", "v", "NoSchedule"), True),
        (Toleration("k", "", "v"), Taint("k", "v", "NoExecute"), True),
        (Toleration("k", "Equal", "w"), Taint("k", "v", "NoSchedule"), False),
        (Toleration("k", "Equal", ""), Taint("k", "", "NoSchedule"), True),
        (Toleration("k", "Exists"), Taint("k", "anything", "NoExecute"), True),
        (Toleration("k", "Exists", "", "NoExecute"), Taint("k", "v", "NoSchedule"), False),
        (Toleration("other", "Exists"), Taint("k", "v", "NoSchedule"), False),
        (Toleration("", "Exists"), Taint("k", "v", "NoSchedule"), True),
        (Toleration("", "Exists", "", "NoSchedule"), Taint("k", "v", "NoExecute"), False),
        (Toleration("k", "Lt", "5"), Taint("k", "3", "NoSchedule"), False),
    ],
)
def test_toleration_matching(toleration: Toleration, taint: Taint, tolerated: bool) -> None:
    assert tolerates(toleration, taint) is tolerated
    node = NodeInfo("n", taints=(taint,))
    assert fits(Constraints(tolerations=(toleration,)), node).ok is tolerated


def test_taints_by_effect_and_ignored_keys() -> None:
    assert outcome(Constraints(), NODE) == (False, "untolerated taint nvidia.com/gpu=present:NoSchedule")
    assert fits(Constraints(), NODE, ignore_taints=frozenset({"nvidia.com/gpu"})).ok
    assert fits(Constraints(), NodeInfo("n", taints=(Taint("k", "", "PreferNoSchedule"),))).ok
    no_execute = NodeInfo("n", taints=(Taint("node.kubernetes.io/unreachable", "", "NoExecute"),))
    assert outcome(Constraints(), no_execute) == (
        False,
        "untolerated taint node.kubernetes.io/unreachable:NoExecute",
    )


@pytest.mark.parametrize(
    ("resources", "reason"),
    [
        ((("nvidia.com/gpu", Fraction(1)),), ""),
        ((("nvidia.com/gpu", Fraction(2)),), "needs nvidia.com/gpu=2, node has 1"),
        ((("amd.com/gpu", Fraction(1)),), "needs amd.com/gpu=1, node has 0"),
        ((("example.com/slice", Fraction(1, 2)),), "needs example.com/slice=0.5, node has 0"),
    ],
)
def test_extended_resources(resources: tuple[tuple[str, Fraction], ...], reason: str) -> None:
    assert outcome(on_gpu_node(resources=resources), NODE) == (not reason, reason)


def test_node_info_from_api_object() -> None:
    node = node_info_from({
        "metadata": {"name": "gpu-1", "labels": {"gpu": "a100"}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                            {"key": "cordon", "effect": "NoExecute", "timeAdded": "2024-01-01T00:00:00Z"}]},
        "status": {"allocatable": {"nvidia.com/gpu": "4", "memory": "65536Ki", "cpu": "7500m",
                                   "broken": "lots"}},
    })  # fmt: skip
    assert node.name == "gpu-1"
    assert dict(node.labels) == {"gpu": "a100"}
    assert node.taints == (Taint("nvidia.com/gpu", "present", "NoSchedule"), Taint("cordon", "", "NoExecute"))
    assert dict(node.allocatable) == {
        "nvidia.com/gpu": 4,
        "memory": 65536 * 1024,
        "cpu": Fraction(15, 2),
    }
    assert node_info_from({}) == NodeInfo("")


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ({}, True),
        ({"gpu": "a100"}, True),
        ({"gpu": "a100", "zone": "z2"}, False),
        ({"matchLabels": {"gpu": "a100"}}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100", "h100"]}]}, True),
        ({"matchLabels": {"zone": "z1"},
          "matchExpressions": [{"key": "spot", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "NotIn", "values": ["a100"]}]}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, True),
        ({"matchLabels": {}, "matchExpressions": []}, True),
    ],
)  # fmt: skip
def test_node_matches_selector(selector: dict[str, Any], matches: bool) -> None:
    assert node_matches_selector(NODE, selector) is matches


@pytest.mark.parametrize(
    "expression",
    [
        {"key": "gpu", "operator": "Gt", "values": ["1"]},
        {"key": "gpu", "operator": "In", "values": []},
        {"key": "gpu", "operator": "Exists", "values": ["x"]},
    ],
)
def test_node_selector_config_errors_name_the_key(expression: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="'gpu'"):
        node_matches_selector(NODE, {"matchExpressions": [expression]})


KEYS = st.sampled_from(["gpu", "zone", "pool", "nvidia.com/gpu", "spot", ""])
VALUES = st.sampled_from(["", "a100", "h100", "1", "2", "present"])
EFFECTS = st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"])
TAINTS = st.builds(Taint, KEYS, VALUES, EFFECTS)
TOLERATIONS = st.builds(
    Toleration, KEYS, st.sampled_from(["Equal", "Exists", ""]), VALUES, EFFECTS | st.just("")
)
REQUIREMENTS = st.builds(
    Requirement,
    KEYS,
    st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]),
    st.lists(VALUES, max_size=2).map(tuple),
)
TERMS = st.builds(Term, st.lists(REQUIREMENTS, min_size=1, max_size=2).map(tuple))
AMOUNTS = st.fractions(min_value=0, max_value=8, max_denominator=4)
RESOURCES = st.lists(st.tuples(st.sampled_from(["nvidia.com/gpu", "x.io/fpga"]), AMOUNTS), max_size=1)
NODES = st.builds(
    NodeInfo,
    st.sampled_from(["n1", "n2"]),
    st.dictionaries(KEYS, VALUES, max_size=5),
    st.lists(TAINTS, max_size=2).map(tuple),
    st.dictionaries(st.sampled_from(["nvidia.com/gpu", "x.io/fpga", "cpu"]), AMOUNTS, max_size=3),
)
CONSTRAINTS = st.builds(
    Constraints,
    st.lists(st.tuples(KEYS, VALUES), max_size=1).map(tuple),
    st.none() | st.lists(TERMS, min_size=1, max_size=2).map(tuple),
    st.lists(TOLERATIONS, max_size=3).map(tuple),
    RESOURCES.map(tuple),
)


@given(NODES)
def test_no_constraints_fit_any_untainted_node(node: NodeInfo) -> None:
    untainted = NodeInfo(node.name, node.labels, (), node.allocatable)
    assert fits(Constraints(), untainted).ok


@given(NODES)
def test_tolerate_everything_fits_any_node(node: NodeInfo) -> None:
    assert fits(Constraints(tolerations=(Toleration("", "Exists"),)), node).ok


@given(CONSTRAINTS, NODES, TOLERATIONS)
def test_adding_a_toleration_never_breaks_a_fit(
    constraints: Constraints, node: NodeInfo, toleration: Toleration
) -> None:
    more = replace(constraints, tolerations=(*constraints.tolerations, toleration))
    assert fits(more, node).ok >= fits(constraints, node).ok


@given(CONSTRAINTS, NODES, st.lists(TERMS, min_size=1, max_size=2), TERMS)
def test_adding_an_affinity_term_never_breaks_a_fit(
    constraints: Constraints, node: NodeInfo, terms: list[Term], term: Term
) -> None:
    base = replace(constraints, required_terms=tuple(terms))
    more = replace(constraints, required_terms=(*terms, term))
    assert fits(more, node).ok >= fits(base, node).ok


@given(CONSTRAINTS, NODES, TAINTS, st.integers(min_value=0, max_value=2))
def test_removing_or_ignoring_a_taint_never_breaks_a_fit(
    constraints: Constraints, node: NodeInfo, taint: Taint, index: int
) -> None:
    tainted = replace(node, taints=(*node.taints[:index], taint, *node.taints[index:]))
    was = fits(constraints, tainted).ok
    assert fits(constraints, node).ok >= was
    assert fits(constraints, tainted, ignore_taints=frozenset({taint.key})).ok >= was


@given(CONSTRAINTS, NODES)
def test_a_failed_fit_always_says_why(constraints: Constraints, node: NodeInfo) -> None:
    result = fits(constraints, node)
    event(f"fits={result.ok}")
    assert result.ok == (result.reason == "")
