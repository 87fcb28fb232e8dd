"""Would a pod with these scheduling constraints be placed on this node? Answered as kube-scheduler does.

Covers the filters that decide where a model server can ever run, independent of what else is
running: ``nodeSelector``, required node affinity (terms ORed, requirements ANDed), taints with
effect ``NoSchedule``/``NoExecute`` against tolerations, and extended resources (GPUs) against the
node's allocatable. CPU and memory are left out on purpose: whether they fit depends on the other
pods on the node, which changes by the minute, while a model warmed for the node is worth having
either way. Semantics follow k8s.io/component-helpers ``nodeaffinity`` and the ``ToleratesTaint``
method of core/v1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from prefetcher.core.lenient import mapping, mappings
from prefetcher.core.quantity import format_quantity, parse_quantity
from prefetcher.errors import ConfigError

_INT64 = re.compile(r"[+-]?[0-9]+")
_SCHEDULING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
SELECTOR_OPERATORS = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})


@dataclass(frozen=True, slots=True)
class Requirement:
    """One ``matchExpressions``/``matchFields`` entry: key, operator and values."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{self.key} {self.operator}"
        return f"{self.key} {self.operator} ({', '.join(self.values)})"


@dataclass(frozen=True, slots=True)
class Term:
    """A node selector term: every expression and field requirement must hold."""

    match_expressions: tuple[Requirement, ...] = ()
    match_fields: tuple[Requirement, ...] = ()


@dataclass(frozen=True, slots=True)
class Toleration:
    """A pod toleration; the empty operator means ``Equal``."""

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""


@dataclass(frozen=True, slots=True)
class Taint:
    """A node taint."""

    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True, slots=True)
class Constraints:
    """Where a pod may be scheduled. ``required_terms`` None means no required node affinity."""

    node_selector: tuple[tuple[str, str], ...] = ()
    required_terms: tuple[Term, ...] | None = None
    tolerations: tuple[Toleration, ...] = ()
    resources: tuple[tuple[str, Fraction], ...] = ()


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the fit check needs to know about a node."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    taints: tuple[Taint, ...] = ()
    allocatable: Mapping[str, Fraction] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class FitResult:
    """Whether a pod fits and, if not, a short reason naming the first failed check."""

    ok: bool
    reason: str = ""


FIT = FitResult(True)


def fits(
    constraints: Constraints, node: NodeInfo, *, ignore_taints: frozenset[str] = frozenset()
) -> FitResult:
    """Would kube-scheduler's static filters admit a pod with ``constraints`` on ``node``."""
    for key, value in constraints.node_selector:
        if node.labels.get(key) != value:
            return FitResult(False, f"node lacks label {key}={value}")
    if constraints.required_terms is not None and not any(
        term_matches(term, node) for term in constraints.required_terms
    ):
        return FitResult(False, _affinity_reason(constraints.required_terms, node))
    for taint in node.taints:
        if taint.effect not in _SCHEDULING_EFFECTS or taint.key in ignore_taints:
            continue
        if not any(tolerates(toleration, taint) for toleration in constraints.tolerations):
            return FitResult(False, f"untolerated taint {taint}")
    for name, wanted in constraints.resources:
        has = node.allocatable.get(name, Fraction(0))
        if wanted > has:
            return FitResult(False, f"needs {name}={_show(wanted)}, node has {_show(has)}")
    return FIT


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    """core/v1 ``Toleration.ToleratesTaint``: empty key with Exists tolerates every taint."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    if toleration.operator in ("", "Equal"):
        return toleration.value == taint.value
    return toleration.operator == "Exists"


def term_matches(term: Term, node: NodeInfo) -> bool:
    """A term matches when it is non-empty and all its requirements hold (empty matches nothing)."""
    if not term.match_expressions and not term.match_fields:
        return False
    fields = {"metadata.name": node.name}
    return all(requirement_holds(r, node.labels) for r in term.match_expressions) and all(
        r.key in fields and r.operator in ("In", "NotIn") and requirement_holds(r, fields)
        for r in term.match_fields
    )


def requirement_holds(requirement: Requirement, labels: Mapping[str, str]) -> bool:
    """Evaluate one requirement against labels; an unknown operator or bad integer never holds."""
    op, present = requirement.operator, requirement.key in labels
    value = labels.get(requirement.key, "")
    if op == "In":
        return present and value in requirement.values
    if op == "NotIn":
        return not present or value not in requirement.values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and len(requirement.values) == 1:
        ours, theirs = _int64(value), _int64(requirement.values[0])
        if ours is None or theirs is None:
            return False
        return ours > theirs if op == "Gt" else ours < theirs
    return False


def _show(value: Fraction) -> str:
    try:
        return format_quantity(value)
    except ValueError:
        return str(value)  # not from a quantity; say it as a fraction rather than fail


def _int64(text: str) -> int | None:
    if not _INT64.fullmatch(text):
        return None
    number = int(text)
    return number if -(2**63) <= number < 2**63 else None


def _affinity_reason(terms: tuple[Term, ...], node: NodeInfo) -> str:
    if len(terms) != 1:
        return f"node matches none of {len(terms)} required node affinity terms"
    term = terms[0]
    for requirement in term.match_expressions:
        if not requirement_holds(requirement, node.labels):
            return f"node affinity requires {requirement}"
    for requirement in term.match_fields:
        return f"node affinity requires field {requirement}"
    return "node affinity term is empty and matches no node"


def node_info_from(node: Mapping[str, Any]) -> NodeInfo:
    """Build a NodeInfo from a core/v1 Node as the API returns it (JSON-decoded)."""
    metadata, spec, status = (mapping(node.get(k)) for k in ("metadata", "spec", "status"))
    labels = {str(k): str(v) for k, v in mapping(metadata.get("labels")).items()}
    taints = tuple(
        Taint(str(t.get("key", "")), str(t.get("value") or ""), str(t.get("effect", "")))
        for t in mappings(spec.get("taints"))
    )
    allocatable: dict[str, Fraction] = {}
    for name, quantity in mapping(status.get("allocatable")).items():
        try:
            allocatable[str(name)] = parse_quantity(str(quantity))
        except ValueError:
            continue  # the API server validates quantities; a bad one counts as zero
    return NodeInfo(str(metadata.get("name", "")), labels, taints, allocatable)


def selector_requirements(selector: Mapping[str, Any]) -> tuple[Requirement, ...]:
    """Requirements of a plain ``{label: value}`` map or a ``matchLabels``/``matchExpressions``."""
    if not _is_label_selector(selector):
        return tuple(Requirement(str(k), "In", (str(v),)) for k, v in selector.items())
    plain = mapping(selector.get("matchLabels"))
    requirements = [Requirement(str(k), "In", (str(v),)) for k, v in plain.items()]
    for expression in mappings(selector.get("matchExpressions")):
        key, op = str(expression.get("key", "")), str(expression.get("operator", ""))
        values = tuple(str(v) for v in expression.get("values") or ())
        if op not in SELECTOR_OPERATORS:
            raise ConfigError(
                f"selector operator {op!r} for key {key!r} is not In, NotIn, Exists, DoesNotExist"
            )
        if (op in ("In", "NotIn")) != bool(values):
            raise ConfigError(f"selector operator {op} for key {key!r} has values {list(values)}")
        requirements.append(Requirement(key, op, values))
    return tuple(requirements)


def node_matches_selector(node: NodeInfo, selector: Mapping[str, Any]) -> bool:
    """Whether the node's labels satisfy a label map or label selector (empty matches all)."""
    return all(requirement_holds(r, node.labels) for r in selector_requirements(selector))


def _is_label_selector(selector: Mapping[str, Any]) -> bool:
    return any(
        isinstance(selector.get(key), kind)
        for key, kind in (("matchLabels", Mapping), ("matchExpressions", list))
    )
