"""What an InferenceService (serving.kserve.io/v1beta1) asks of a node: image models and where they run.

``extract_models`` reads the places KServe itself reads a model URI (docs/kserve-compat.md, "Where
an InferenceService names its model") in the predictor, transformer and explainer, and keeps per
component only what the agent needs: ``oci://``/``oci+native://`` URIs, scheduling constraints,
pull identity, ``minReplicas`` and a priority. The record holds tuples of strings and numbers and
no part of the input, as the agent keeps one per InferenceService in the cluster. Malformed input
is reported in ``problems`` rather than raised: one bad object costs an Event, not the watch.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from prefetcher.core import nodefit
from prefetcher.core.lenient import mapping, mappings
from prefetcher.core.model import ModelRequest
from prefetcher.core.nodefit import Constraints, NodeInfo
from prefetcher.core.quantity import parse_quantity
from prefetcher.core.refs import IMAGE_SCHEMES, parse_reference
from prefetcher.errors import InvalidReferenceError

PRIORITY_ANNOTATION = "modelcar-prefetcher.io/priority"
COMPONENTS = ("predictor", "transformer", "explainer")
FRAMEWORKS = (
    "sklearn", "xgboost", "tensorflow", "pytorch", "triton",
    "onnx", "huggingface", "pmml", "lightgbm", "paddle",
)  # fmt: skip
SERVING_CONTAINER = "kserve-container"
STORAGE_URI_ENV = "STORAGE_URI"
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with an InferenceService; ``reason`` is a bounded label for Events."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Component:
    """One component (predictor, transformer, explainer) that serves image models."""

    name: str
    uris: tuple[str, ...]
    constraints: Constraints
    service_account: str = ""
    image_pull_secrets: tuple[str, ...] = ()
    min_replicas: int = 1
    priority: int = 0

    @property
    def scales_to_zero(self) -> bool:
        """True when the component may have no replicas, so its next start is a cold one."""
        return self.min_replicas == 0


@dataclass(frozen=True, slots=True)
class IsvcModels:
    """The image models of one InferenceService; components without one are left out."""

    namespace: str
    name: str
    uid: str = ""
    components: tuple[Component, ...] = ()
    problems: tuple[Problem, ...] = ()

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def source(self) -> str:
        """The ``ModelRequest.source`` of this InferenceService's models."""
        return f"isvc {self.key}"


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A model left out for this node, and why."""

    source: str
    component: str
    uri: str
    reason: str


@dataclass(frozen=True, slots=True)
class Selection:
    """The models a node should warm, and those left out."""

    requests: tuple[ModelRequest, ...] = ()
    excluded: tuple[Exclusion, ...] = ()


def extract_models(
    isvc: Mapping[str, Any],
    *,
    default_priority: int,
    scale_to_zero_boost: int,
    priority_annotation: str = PRIORITY_ANNOTATION,
) -> IsvcModels:
    """The compact record of an InferenceService as the API returns it (JSON-decoded)."""
    metadata, spec = mapping(isvc.get("metadata")), mapping(isvc.get("spec"))
    problems: list[Problem] = []
    base = _priority(metadata, priority_annotation, default_priority, problems)
    built = (
        _component(name, spec.get(name), base=base, boost=scale_to_zero_boost, problems=problems)
        for name in COMPONENTS
    )
    components = tuple(component for component in built if component is not None)
    return IsvcModels(
        namespace=_text(metadata.get("namespace")),
        name=_text(metadata.get("name")),
        uid=_text(metadata.get("uid")),
        components=components,
        problems=tuple(problems),
    )


def select(
    records: Iterable[IsvcModels], node: NodeInfo, *, ignore_taints: frozenset[str] = frozenset()
) -> Selection:
    """Requests for every model whose component fits ``node``; the rest with the reason."""
    requests: list[ModelRequest] = []
    excluded: list[Exclusion] = []
    for record in records:
        wanted: dict[str, int] = {}
        for component in record.components:
            result = nodefit.fits(component.constraints, node, ignore_taints=ignore_taints)
            for uri in component.uris:
                if result.ok:
                    wanted[uri] = max(wanted.get(uri, component.priority), component.priority)
                else:
                    excluded.append(Exclusion(record.source, component.name, uri, result.reason))
        requests.extend(ModelRequest(uri, p, record.source) for uri, p in wanted.items())
    return Selection(tuple(requests), tuple(excluded))


def _component(
    name: str, spec: object, *, base: int, boost: int, problems: list[Problem]
) -> Component | None:
    if not isinstance(spec, Mapping) or not (uris := _image_uris(name, spec, problems)):
        return None
    min_replicas = _min_replicas(name, spec.get("minReplicas"), problems)
    return Component(
        name=name,
        uris=uris,
        constraints=constraints_from(name, spec, problems),
        service_account=_text(spec.get("serviceAccountName")),
        image_pull_secrets=tuple(_text(s.get("name")) for s in mappings(spec.get("imagePullSecrets"))),
        min_replicas=min_replicas,
        priority=base + (boost if min_replicas == 0 else 0),
    )


def _uri_candidates(spec: Mapping[str, Any]) -> Iterator[object]:
    yield mapping(spec.get("model")).get("storageUri")
    for framework in FRAMEWORKS:
        yield mapping(spec.get(framework)).get("storageUri")
    for container in mappings(spec.get("containers")):
        if container.get("name") == SERVING_CONTAINER:
            for env in mappings(container.get("env")):
                if env.get("name") == STORAGE_URI_ENV:
                    yield env.get("value")
    for entry in mappings(spec.get("storageUris")):
        yield entry.get("uri")


def _image_uris(component: str, spec: Mapping[str, Any], problems: list[Problem]) -> tuple[str, ...]:
    uris: dict[str, None] = {}
    for candidate in _uri_candidates(spec):
        if not isinstance(candidate, str) or not candidate.strip().startswith(IMAGE_SCHEMES):
            continue  # s3://, gs://, hf://, pvc://, oci+fetch://…: not an image the node pulls
        uri = candidate.strip()
        try:
            parse_reference(uri)
        except InvalidReferenceError as error:
            problems.append(Problem("InvalidModelURI", f"{component}: {error}"))
            continue
        uris[uri] = None
    return tuple(uris)


def constraints_from(component: str, spec: Mapping[str, Any], problems: list[Problem]) -> Constraints:
    """The scheduling constraints of a component's pod spec; bad quantities go to ``problems``."""
    selector = mapping(spec.get("nodeSelector"))
    affinity = mapping(mapping(spec.get("affinity")).get("nodeAffinity"))
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    terms = None
    if isinstance(required, Mapping):
        terms = tuple(_term(t) for t in mappings(required.get("nodeSelectorTerms")))
    tolerations = tuple(
        nodefit.Toleration(
            _text(t.get("key")),
            _text(t.get("operator")) or "Equal",
            _text(t.get("value")),
            _text(t.get("effect")),
        )
        for t in mappings(spec.get("tolerations"))
    )
    return Constraints(
        node_selector=tuple(sorted((_text(k), _text(v)) for k, v in selector.items())),
        required_terms=terms,
        tolerations=tolerations,
        resources=_extended_resources(component, spec, problems),
    )


def _term(term: Mapping[str, Any]) -> nodefit.Term:
    def requirements(key: str) -> tuple[nodefit.Requirement, ...]:
        return tuple(
            nodefit.Requirement(
                _text(r.get("key")),
                _text(r.get("operator")),
                tuple(_text(v) for v in r.get("values") or () if isinstance(v, str)),
            )
            for r in mappings(term.get(key))
        )

    return nodefit.Term(requirements("matchExpressions"), requirements("matchFields"))


def _extended_resources(
    component: str, spec: Mapping[str, Any], problems: list[Problem]
) -> tuple[tuple[str, Fraction], ...]:
    # The model or framework spec is the serving container; a ``containers`` entry of the same
    # name describes it too, so per container take the larger value, then sum over containers.
    sources = [(SERVING_CONTAINER, spec.get("model"))]
    sources += [(SERVING_CONTAINER, spec.get(framework)) for framework in FRAMEWORKS]
    containers = enumerate(mappings(spec.get("containers")))
    sources += [(_text(c.get("name")) or f"#{i}", c) for i, c in containers]
    per_container: dict[str, dict[str, Fraction]] = {}
    for container, container_spec in sources:
        wanted = per_container.setdefault(container, {})
        for resource, quantity in _requests(component, mapping(container_spec), problems):
            wanted[resource] = max(wanted.get(resource, quantity), quantity)
    totals: dict[str, Fraction] = {}
    for resource, quantity in (item for w in per_container.values() for item in w.items()):
        totals[resource] = totals.get(resource, Fraction(0)) + quantity
    return tuple(sorted((r, q) for r, q in totals.items() if q > 0))


def _requests(
    component: str, container: Mapping[str, Any], problems: list[Problem]
) -> Iterator[tuple[str, Fraction]]:
    resources = mapping(container.get("resources"))
    # A limit alone on an extended resource is also its request (core/v1 defaulting).
    merged = {**mapping(resources.get("limits")), **mapping(resources.get("requests"))}
    for name, quantity in merged.items():
        resource = str(name)
        # IsExtendedResourceName (k8s.io/api/core/v1/helper): domain-prefixed and not native.
        if "/" not in resource or "kubernetes.io/" in resource or resource.startswith("requests."):
            continue
        try:
            yield sys.intern(resource), parse_quantity(str(quantity))
        except ValueError as error:
            problems.append(Problem("InvalidSpec", f"{component}: {resource}: {error}"))


def _priority(metadata: Mapping[str, Any], annotation: str, default: int, problems: list[Problem]) -> int:
    value = mapping(metadata.get("annotations")).get(annotation)
    if value is None:
        return default
    if isinstance(value, str) and _INTEGER.fullmatch(text := value.strip()):
        return int(text)
    problems.append(
        Problem("InvalidPriority", f"annotation {annotation}={value!r} is not an integer; using {default}")
    )
    return default


def _min_replicas(component: str, value: object, problems: list[Problem]) -> int:
    if value is None:
        return 1  # KServe's default
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    problems.append(Problem("InvalidSpec", f"{component}: minReplicas {value!r} is invalid; using 1"))
    return 1


def _text(value: object) -> str:
    # Interned: label keys, values and names repeat across thousands of records.
    return sys.intern(value) if isinstance(value, str) else ""
