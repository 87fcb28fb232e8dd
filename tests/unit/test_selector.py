"""The incremental selector answers exactly as ``select`` over the same records and node."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from prefetcher.core.isvc import Component, IsvcModels, select
from prefetcher.core.nodefit import Constraints, NodeInfo, Taint, Toleration
from prefetcher.core.selector import Selector

DIGEST = "sha256:" + "ab" * 32
GPU = (("nvidia.com/gpu", Fraction(1)),)
CONSTRAINTS = [
    Constraints(),
    Constraints(node_selector=(("pool", "gpu"),)),
    Constraints(resources=GPU),
    Constraints(tolerations=(Toleration("nvidia.com/gpu", "Exists"),), resources=GPU),
]
NODES = [
    NodeInfo("n", {"pool": "cpu"}),
    NodeInfo("n", {"pool": "gpu"}, (Taint("nvidia.com/gpu", "present"),), {"nvidia.com/gpu": Fraction(1)}),
    NodeInfo("n", {"pool": "gpu"}, (), {"nvidia.com/gpu": Fraction(2)}),
]


def record(name: str, model: int, constraints: int) -> IsvcModels:
    uri = f"oci://registry.example.com/models/m{model}@{DIGEST}"
    component = Component("predictor", (uri,), CONSTRAINTS[constraints], priority=model)
    return IsvcModels("team", name, components=(component,))


# Each step: a record created, replaced or deleted (constraints None), or the node changing.
steps = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from("abcdef"), st.integers(0, 3), st.none() | st.integers(0, len(CONSTRAINTS) - 1)
        ),
        st.integers(0, len(NODES) - 1),
    ),
    max_size=30,
)


@given(steps)
def test_selector_matches_select_after_every_change(changes: list[object]) -> None:
    selector, records, node = Selector(), {}, NODES[0]
    for change in changes:
        if isinstance(change, int):
            node = NODES[change]
        else:
            assert isinstance(change, tuple)
            name, model, constraints = change
            if constraints is None:
                records.pop(name, None)
            else:
                records[name] = record(name, model, constraints)
        assert selector.select(records.values(), node) == select(records.values(), node)


def test_taints_the_agent_ignores_are_ignored_as_select_does() -> None:
    node = NODES[1]
    records = [record("a", 0, 2)]
    ignoring = frozenset({"nvidia.com/gpu"})
    got = Selector(ignore_taints=ignoring).select(records, node)
    assert got == select(records, node, ignore_taints=ignoring)
    assert [r.uri for r in got.requests] == [records[0].components[0].uris[0]]
