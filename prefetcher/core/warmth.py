"""Where each model is warm across the fleet, from what every node's agent publishes.

Each agent's node summary (``modelcar-prefetcher.io/summary``) carries ``models``: one entry per
model desired on that node — it fits there — keyed by reference::

    "models": {"reg/repo@sha256:…": {"state": "skipped", "reason": "budget", "isvcs": ["ns/name"]}}

``state`` is ``warm``, ``pulling``, ``waiting`` (for a turn: ``reason`` ``concurrency`` is this
node's ``pull.concurrency``, ``paced`` the fleet's pacing) or ``skipped`` (``reason`` is the skip
reason, the label of ``prefetcher_models_skipped``); ``reason`` and ``isvcs`` (the
InferenceServices that want the model here) are left out when empty. ``node_models`` builds that
entry from a plan; ``aggregate`` folds the summaries of all nodes into one row per model, and
``isvc_warmth`` counts, per InferenceService, the nodes where all its models that fit are warm
("warm on N of M eligible nodes"). Pure: no I/O, no clock.

Any Node's annotation can be written by anyone with patch rights on it, so a summary is read as
untrusted (``read_summary``): text that is not a JSON object, or whose ``models`` is not an object,
is ``Unreadable`` with the reason, and the node counts nowhere; a model entry that is not an object
with a known ``state``, a ``reason`` that is text and ``isvcs`` a list of text, or whose reference
or any text in it is not printable (control characters, lone surrogates from ``\\u`` escapes) or
longer than ``MAX_TEXT``, is dropped, and the node's other entries still count. ``FleetView`` names
each node with a problem and the reason, so one bad node never hides the others.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefetcher.core.model import Plan, SkipReason

ISVC_PREFIX = "isvc "  # a ModelRequest.source naming an InferenceService (adapters.kube)
STATES = ("warm", "pulling", "waiting", "skipped")
_PACED = "paced"  # the skip reason fleet pacing gives a model waiting for its turn
MAX_TEXT = 1024  # a reference, reason or InferenceService key longer than this is junk


@dataclass(frozen=True)
class Unreadable:
    """A node's summary annotation that could not be read, and why."""

    reason: str


Summary = Mapping[str, Any] | Unreadable | None  # a decoded summary; None: the node has none


def read_summary(text: object) -> Summary:
    """A node's summary annotation decoded (None when absent); ``Unreadable`` unless a JSON object."""
    if text is None:
        return None
    if not isinstance(text, str):
        return Unreadable(f"not text but {type(text).__name__}")
    try:
        value = json.loads(text)
    except RecursionError:
        return Unreadable(f"not readable JSON: nested too deeply ({len(text)} characters)")
    except ValueError as err:  # JSONDecodeError's message gives a position, never the text
        return Unreadable(f"not JSON: {str(err)[:200]}")
    if not isinstance(value, dict):
        return Unreadable(f"not a JSON object but {_json_type(value)}")
    return value


def node_entries(summary: Summary) -> tuple[dict[str, dict[str, Any]], str]:
    """A summary's well-formed model entries (``reason`` str, ``isvcs`` tuple), and what was wrong."""
    if summary is None:
        return {}, ""
    if isinstance(summary, Unreadable):
        return {}, summary.reason
    models = summary.get("models")
    if models is None:
        return {}, ""  # an agent of a version that publishes counts only
    if not isinstance(models, Mapping):
        return {}, f'"models" is not a JSON object but {_json_type(models)}'
    entries = {ref: clean for ref, entry in models.items() if (clean := _clean(ref, entry)) is not None}
    bad = len(models) - len(entries)
    return entries, (f"{bad} of {len(models)} model entries malformed, ignored" if bad else "")


def _clean(ref: object, entry: object) -> dict[str, Any] | None:
    if not _text(ref) or not isinstance(entry, Mapping) or entry.get("state") not in STATES:
        return None
    reason, isvcs = entry.get("reason", ""), entry.get("isvcs", [])
    if not (reason == "" or _text(reason)) or not isinstance(isvcs, list) or not all(map(_text, isvcs)):
        return None
    return {"state": entry["state"], "reason": reason, "isvcs": tuple(isvcs)}


def _text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT and value.isprintable()


def _json_type(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null")


def node_models(plan: Plan, pulling: Collection[str]) -> dict[str, dict[str, Any]]:
    """The summary's ``models``: the state of every model ``plan`` considered on this node."""
    models: dict[str, dict[str, Any]] = {}
    for model in plan.warm:
        models[model.ref.canonical()] = _entry("warm", "", model.sources)
    for pull in plan.pulls:
        ref = pull.model.ref.canonical()
        state, reason = ("pulling", "") if ref in pulling else ("waiting", "concurrency")
        models[ref] = _entry(state, reason, pull.model.sources)
    for skip in plan.skips:
        if skip.reason is SkipReason.IN_FLIGHT:
            models[skip.ref] = _entry("pulling", "", skip.sources)
        elif skip.reason.value == _PACED:
            models[skip.ref] = _entry("waiting", _PACED, skip.sources)
        else:
            models[skip.ref] = _entry("skipped", skip.reason.value, skip.sources)
    return models


def _entry(state: str, reason: str, sources: Iterable[str]) -> dict[str, Any]:
    isvcs = sorted({s.removeprefix(ISVC_PREFIX) for s in sources if s.startswith(ISVC_PREFIX)})
    return {"state": state} | ({"reason": reason} if reason else {}) | ({"isvcs": isvcs} if isvcs else {})


@dataclass(frozen=True)
class ModelRow:
    """One model across the fleet: the nodes in each state, and who wants it."""

    ref: str
    isvcs: tuple[str, ...] = ()
    warm: tuple[str, ...] = ()
    pulling: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    reasons: Mapping[str, int] = field(default_factory=dict)  # skipped and waiting nodes, by reason

    @property
    def fits(self) -> int:
        """Nodes where the model fits: every node whose agent lists it."""
        return len(self.warm) + len(self.pulling) + len(self.waiting) + len(self.skipped)


@dataclass(frozen=True)
class FleetView:
    """Every model's row, the nodes with no readable ``models``, and what is wrong with bad summaries."""

    models: tuple[ModelRow, ...]
    nodes: int
    silent: tuple[str, ...] = ()
    unreadable: Mapping[str, str] = field(default_factory=dict)  # node -> what is wrong with its summary


def aggregate(
    summaries: Mapping[str, Summary], isvc_refs: Mapping[str, Iterable[str]] | None = None
) -> FleetView:
    """Per-model rows from each node's summary (None: no summary); ``isvc_refs`` adds models nobody holds.

    ``isvc_refs`` maps ``namespace/name`` to the references its models name, so the models of an
    InferenceService that no node lists still have a row (fits 0), and a row names every
    InferenceService known to want it.
    """
    states: dict[str, dict[str, list[str]]] = {}
    reasons: dict[str, Counter[str]] = {}
    isvcs: dict[str, set[str]] = {}
    silent, unreadable = [], {}
    for node, summary in sorted(summaries.items()):
        models, problem = node_entries(summary)
        if problem:
            unreadable[node] = problem
        if not isinstance(summary, Mapping) or not isinstance(summary.get("models"), Mapping):
            silent.append(node)  # no summary, or none with models: counted nowhere
        for ref, entry in models.items():
            state = entry["state"]
            states.setdefault(ref, {}).setdefault(state, []).append(node)
            if entry["reason"] and state in ("waiting", "skipped"):
                reasons.setdefault(ref, Counter())[entry["reason"]] += 1
            isvcs.setdefault(ref, set()).update(entry["isvcs"])
    named = {key for keys in isvcs.values() for key in keys}
    for key, refs in (isvc_refs or {}).items():
        # A tag a node resolved to a digest is listed under the digest: no second, empty row for it.
        for ref in (r for r in refs if r in states or key not in named):
            isvcs.setdefault(ref, set()).add(key)
            states.setdefault(ref, {})
    rows = (
        ModelRow(
            ref,
            isvcs=tuple(sorted(isvcs.get(ref, ()))),
            warm=tuple(by_state.get("warm", ())),
            pulling=tuple(by_state.get("pulling", ())),
            waiting=tuple(by_state.get("waiting", ())),
            skipped=tuple(by_state.get("skipped", ())),
            reasons=dict(sorted(reasons.get(ref, Counter()).items())),
        )
        for ref, by_state in sorted(states.items())
    )
    return FleetView(tuple(rows), len(summaries), tuple(silent), unreadable)


@dataclass(frozen=True)
class Warmth:
    """An InferenceService is warm on ``warm`` of the ``eligible`` nodes where any of its models fits."""

    warm: int
    eligible: int

    def message(self) -> str:
        """The Event's message."""
        return f"warm on {self.warm} of {self.eligible} eligible nodes"


def isvc_warmth(summaries: Mapping[str, Summary]) -> dict[str, Warmth]:
    """Per InferenceService (``namespace/name``): nodes where all its models that fit are warm, of those
    where one fits; one pass over the summaries (the well-formed entries of each, see ``node_entries``)."""
    warm: Counter[str] = Counter()
    eligible: Counter[str] = Counter()
    for summary in summaries.values():
        cold: set[str] = set()
        wanted: set[str] = set()
        for entry in node_entries(summary)[0].values():
            wanted.update(entry["isvcs"])
            if entry["state"] != "warm":
                cold.update(entry["isvcs"])
        eligible.update(wanted)
        warm.update(wanted - cold)
    return {key: Warmth(warm[key], eligible[key]) for key in sorted(eligible)}
