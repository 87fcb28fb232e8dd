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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefetcher.core.model import Plan, SkipReason

ISVC_PREFIX = "isvc "  # a ModelRequest.source naming an InferenceService (adapters.kube)
STATES = ("warm", "pulling", "waiting", "skipped")
_PACED = "paced"  # the skip reason fleet pacing gives a model waiting for its turn


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
    """Every model's row, and the nodes that publish no readable summary."""

    models: tuple[ModelRow, ...]
    nodes: int
    silent: tuple[str, ...] = ()


def aggregate(
    summaries: Mapping[str, Mapping[str, Any] | None], isvc_refs: Mapping[str, Iterable[str]] | None = None
) -> FleetView:
    """Per-model rows from each node's summary (None: no summary); ``isvc_refs`` adds models nobody holds.

    ``isvc_refs`` maps ``namespace/name`` to the references its models name, so the models of an
    InferenceService that no node lists still have a row (fits 0), and a row names every
    InferenceService known to want it.
    """
    states: dict[str, dict[str, list[str]]] = {}
    reasons: dict[str, Counter[str]] = {}
    isvcs: dict[str, set[str]] = {}
    silent = []
    for node, summary in sorted(summaries.items()):
        models = (summary or {}).get("models")
        if not isinstance(models, Mapping):
            silent.append(node)
            continue
        for ref, entry in models.items():
            state = str(entry.get("state", "")) if isinstance(entry, Mapping) else ""
            if state not in STATES:
                continue
            states.setdefault(ref, {}).setdefault(state, []).append(node)
            if entry.get("reason") and state in ("waiting", "skipped"):
                reasons.setdefault(ref, Counter())[str(entry["reason"])] += 1
            isvcs.setdefault(ref, set()).update(str(i) for i in entry.get("isvcs") or ())
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
    return FleetView(tuple(rows), len(summaries), tuple(silent))


@dataclass(frozen=True)
class Warmth:
    """An InferenceService is warm on ``warm`` of the ``eligible`` nodes where any of its models fits."""

    warm: int
    eligible: int

    def message(self) -> str:
        """The Event's message."""
        return f"warm on {self.warm} of {self.eligible} eligible nodes"


def isvc_warmth(summaries: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Warmth]:
    """Per InferenceService (``namespace/name``): nodes where all its models that fit are warm, of those
    where one fits; one pass over the summaries."""
    warm: Counter[str] = Counter()
    eligible: Counter[str] = Counter()
    for summary in summaries.values():
        models = (summary or {}).get("models")
        if not isinstance(models, Mapping):
            continue
        cold: set[str] = set()
        wanted: set[str] = set()
        for entry in (e for e in models.values() if isinstance(e, Mapping)):
            keys = entry.get("isvcs") or ()
            wanted.update(str(k) for k in keys)
            if entry.get("state") != "warm":
                cold.update(str(k) for k in keys)
        eligible.update(wanted)
        warm.update(wanted - cold)
    return {key: Warmth(warm[key], eligible[key]) for key in sorted(eligible)}
