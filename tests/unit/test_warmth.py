"""The fleet view: node summaries to one row per model, per-InferenceService warmth, the output shapes."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefetcher.core.model import Plan, Pull, Skip, SkipReason
from prefetcher.core.warmth import STATES, Warmth, aggregate, isvc_warmth, node_models, read_summary
from prefetcher.status import document, only_namespace, table
from tests.support.planner_inputs import model

A, B, C = (model(n) for n in ("a", "b", "c"))
REF_A, REF_B, REF_C = (m.ref.canonical() for m in (A, B, C))


def entry(state: str, reason: str = "", *isvcs: str) -> dict[str, Any]:
    optional = {"reason": reason, "isvcs": list(isvcs)}
    return {"state": state} | {k: v for k, v in optional.items() if v}


def test_node_models_names_each_state_and_the_inferenceservices_of_the_plan() -> None:
    a, b = replace(A, sources=("isvc team/a",)), replace(B, sources=("isvc team/b", "file"))
    d = model("d")
    plan = Plan(
        warm=(a,),
        pulls=(Pull(b, 2), Pull(d, 2)),
        skips=(
            Skip(REF_C, SkipReason.BUDGET, "no room", ("isvc team/c",)),
            Skip("x", SkipReason.IN_FLIGHT, "pull in progress"),
        ),
    )
    models = node_models(plan, pulling={REF_B})
    assert models == {
        REF_A: entry("warm", "", "team/a"),
        REF_B: entry("pulling", "", "team/b"),
        d.ref.canonical(): entry("waiting", "concurrency"),
        REF_C: entry("skipped", "budget", "team/c"),
        "x": entry("pulling"),
    }
    json.dumps(models)  # it goes into an annotation


SUMMARIES: dict[str, dict[str, Any] | None] = {
    "n1": {"models": {REF_A: entry("warm", "", "team/a"), REF_B: entry("skipped", "budget", "team/b")}},
    "n2": {"models": {REF_A: entry("pulling", "", "team/a"), REF_B: entry("warm", "", "team/b")}},
    "n3": {"models": {REF_A: entry("waiting", "paced", "team/a")}},
    "n4": {"warm": 0},  # an agent of an older version: counts only
    "n5": None,  # no agent
}


def test_aggregate_counts_each_model_by_state_with_reasons() -> None:
    view = aggregate(SUMMARIES, {"team/a": (REF_A,), "other/c": (REF_C,)})
    rows = {row.ref: row for row in view.models}
    assert (rows[REF_A].warm, rows[REF_A].pulling, rows[REF_A].waiting) == (("n1",), ("n2",), ("n3",))
    assert rows[REF_A].fits == 3 and rows[REF_A].reasons == {"paced": 1}
    assert rows[REF_B].skipped == ("n1",) and rows[REF_B].reasons == {"budget": 1}
    assert rows[REF_C].fits == 0 and rows[REF_C].isvcs == ("other/c",)  # fits no node
    assert view.nodes == 5 and view.silent == ("n4", "n5")


def test_a_tag_resolved_to_a_digest_on_the_nodes_gets_no_empty_row_of_its_own() -> None:
    view = aggregate(SUMMARIES, {"team/a": ("registry.test:5000/models/a:latest",)})
    assert [row.ref for row in view.models] == [REF_A, REF_B]


def test_isvc_warmth_counts_nodes_where_all_its_models_that_fit_are_warm() -> None:
    summaries: dict[str, dict[str, Any] | None] = {
        "n1": {"models": {REF_A: entry("warm", "", "s/x"), REF_B: entry("warm", "", "s/x", "s/y")}},
        "n2": {"models": {REF_A: entry("warm", "", "s/x"), REF_B: entry("pulling", "", "s/x", "s/y")}},
        "n3": {"models": {REF_C: entry("warm", "", "s/z")}},
        "n4": None,
    }
    assert isvc_warmth(summaries) == {"s/x": Warmth(1, 2), "s/y": Warmth(1, 2), "s/z": Warmth(1, 1)}
    assert Warmth(1, 2).message() == "warm on 1 of 2 eligible nodes"


def test_the_json_document_has_a_stable_shape() -> None:
    view = aggregate(SUMMARIES)
    doc = document(view, {"team/a": (1, 3)})
    assert doc["nodes"] == 5 and doc["nodesWithoutSummary"] == ["n4", "n5"]
    assert doc["inferenceServices"] == [{"name": "team/a", "warmNodes": 1, "eligibleNodes": 3}]
    assert doc["models"][0] == {
        "model": REF_A,
        "inferenceServices": ["team/a"],
        "fits": 3,
        "warm": ["n1"],
        "pulling": ["n2"],
        "waiting": ["n3"],
        "skipped": [],
        "reasons": {"paced": 1},
    }


def test_the_tables_show_counts_reasons_and_in_wide_form_the_nodes_not_warm() -> None:
    doc = document(aggregate(SUMMARIES), {"team/a": (1, 3)})
    short, wide = table(doc, wide=False).splitlines(), table(doc, wide=True).splitlines()
    assert short[0].split() == ["MODEL", "FITS", "WARM", "PULLING", "WAITING", "SKIPPED", "REASONS"]
    assert short[1].split() == [REF_A[: REF_A.index("@") + 20], "3", "1", "1", "1", "0", "paced=1"]
    assert "3 of 5 nodes report models" in short
    assert "team/a             warm on 1 of 3 eligible nodes" in short
    assert wide[1].split()[0] == REF_A and wide[1].split()[-2:] == ["team/a", "n2(pulling),n3(waiting)"]
    assert "3 of 5 nodes report models; no summary: n4,n5" in wide


def test_only_namespace_keeps_models_its_inferenceservices_want() -> None:
    view = only_namespace(aggregate(SUMMARIES, {"other/c": (REF_C,)}), "other")
    assert [row.ref for row in view.models] == [REF_C]


entries = st.fixed_dictionaries(
    {"state": st.sampled_from((*STATES, "bogus")), "isvcs": st.lists(st.sampled_from(("s/x", "s/y")))}
)
fleets = st.dictionaries(
    st.text("nm", min_size=1, max_size=4),
    st.none() | st.fixed_dictionaries({"models": st.dictionaries(st.sampled_from((REF_A, REF_B)), entries)}),
)


@given(fleets)
def test_every_node_listing_a_model_is_counted_once_and_warm_never_exceeds_eligible(
    summaries: dict[str, dict[str, Any] | None],
) -> None:
    view = aggregate(summaries)
    for row in view.models:
        listed = {n: s["models"][row.ref] for n, s in summaries.items() if s and row.ref in s["models"]}
        valid = [n for n, e in listed.items() if e["state"] in STATES]
        assert row.fits == len(valid)
        assert sorted(row.warm + row.pulling + row.waiting + row.skipped) == sorted(valid)
    for warmth in isvc_warmth(summaries).values():
        assert 0 <= warmth.warm <= warmth.eligible <= len(summaries)


# Any Node's annotation can hold anything someone with patch rights wrote: junk on one node.
GOOD = json.dumps({"models": {REF_A: entry("warm", "", "team/a")}})
JUNK = {
    "not JSON": "{models: oops",
    "an array": "[1, 2]",
    "a string": '"warm"',
    "null": "null",
    "nested too deeply": "[" * 200_000,
    "digits past the limit": "1" * 200_000,
    "models an array": '{"models": [1]}',
    "entry not an object": json.dumps({"models": {REF_A: "warm"}}),
    "unknown state": json.dumps({"models": {REF_A: {"state": ["warm"]}}}),
    "isvcs a number": json.dumps({"models": {REF_A: {"state": "warm", "isvcs": 5}}}),
    "isvcs a string": json.dumps({"models": {REF_A: {"state": "warm", "isvcs": "team/a"}}}),
    "isvcs holding objects": json.dumps({"models": {REF_A: {"state": "warm", "isvcs": [{"a": 1}]}}}),
    "reason an object": json.dumps({"models": {REF_A: {"state": "skipped", "reason": {"x": 1}}}}),
    "lone surrogate in a reference": '{"models": {"r\\ud800": {"state": "warm", "isvcs": ["team/a"]}}}',
    "terminal escape in a reason": json.dumps({"models": {REF_A: {"state": "skipped", "reason": "\x1b[2J"}}}),
    "huge reference": json.dumps({"models": {"r" * 200_000: {"state": "warm", "isvcs": ["team/a"]}}}),
}


def _rendered(view: Any, warmth: dict[str, Warmth]) -> list[str]:
    doc = document(view, {k: (w.warm, w.eligible) for k, w in warmth.items()})
    outputs = [json.dumps(doc, indent=2), table(doc, wide=False), table(doc, wide=True)]
    for text in outputs:
        text.encode()  # printable to any UTF-8 terminal or pipe: no lone surrogates
        assert all(line.isprintable() for line in text.splitlines()), text[:400]
    return outputs


@pytest.mark.parametrize("text", JUNK.values(), ids=JUNK.keys())
def test_a_junk_summary_on_one_node_is_named_with_its_reason_and_the_others_still_count(text: str) -> None:
    summaries = {"good": read_summary(GOOD), "bad": read_summary(text), "none": read_summary(None)}
    view = aggregate(summaries, {"team/a": (REF_A,)})
    (row,) = (r for r in view.models if r.ref == REF_A)
    assert row.warm == ("good",) and row.fits == 1
    assert set(view.unreadable) == {"bad"}
    assert 0 < len(view.unreadable["bad"]) < 300, view.unreadable  # a reason, never the junk itself
    assert isvc_warmth(summaries)["team/a"] == Warmth(1, 1)
    as_json, short, wide = _rendered(view, isvc_warmth(summaries))
    assert json.loads(as_json)["unreadableSummaries"] == {"bad": view.unreadable["bad"]}
    for output in (short, wide):
        assert f"node bad: summary unreadable: {view.unreadable['bad']}" in output.splitlines()


def test_a_summary_with_some_bad_entries_keeps_its_good_ones() -> None:
    text = json.dumps({"models": {REF_A: entry("warm", "", "team/a"), REF_B: {"state": "warm", "isvcs": 5}}})
    view = aggregate({"n1": read_summary(text)})
    assert [r.ref for r in view.models] == [REF_A] and view.silent == ()
    assert view.unreadable == {"n1": "1 of 2 model entries malformed, ignored"}


def test_more_unreadable_nodes_than_the_table_names_are_counted() -> None:
    view = aggregate({f"n{i}": read_summary("junk") for i in range(8)})
    short = _rendered(view, {})[1].splitlines()
    assert sum(line.startswith("node n") for line in short) == 5
    assert "+3 more nodes with unreadable summaries (-o json lists them)" in short


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
junk_summaries = (
    st.text(max_size=40)
    | json_values.map(json.dumps)
    | json_values.map(lambda v: json.dumps({"models": v}))
    | st.dictionaries(st.text(max_size=6), json_values, max_size=3).map(lambda m: json.dumps({"models": m}))
)


@given(st.lists(junk_summaries, max_size=4))
def test_no_junk_summary_takes_the_view_down_or_hides_a_good_node(texts: list[str]) -> None:
    summaries = {"good": read_summary(GOOD)} | {f"junk{i}": read_summary(t) for i, t in enumerate(texts)}
    view = aggregate(summaries)
    (row,) = (r for r in view.models if r.ref == REF_A)
    assert "good" in row.warm and "good" not in view.unreadable
    _rendered(view, isvc_warmth(summaries))
    assert isvc_warmth(summaries)["team/a"].warm >= 1
