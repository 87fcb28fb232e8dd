"""InferenceService reading: every place KServe names a model, constraints, priority, problems."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefetcher.core.isvc import (
    FRAMEWORKS,
    Component,
    IsvcModels,
    extract_models,
    select,
)
from prefetcher.core.model import ModelRequest
from prefetcher.core.nodefit import Constraints, NodeInfo, Requirement, Taint, Term, Toleration

DIGEST = "sha256:" + "ab" * 32
URI = f"oci://registry.example.com/models/llama@{DIGEST}"
URI2 = f"oci://registry.example.com/models/mistral@{DIGEST}"


def isvc(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"namespace": "team-a", "name": "llm", "uid": "u-1"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": metadata, "spec": spec}  # fmt: skip


def extract(obj: dict[str, Any], *, default: int = 10, boost: int = 5) -> IsvcModels:
    return extract_models(obj, default_priority=default, scale_to_zero_boost=boost)


def uris(record: IsvcModels) -> dict[str, tuple[str, ...]]:
    return {c.name: c.uris for c in record.components}


def kserve_container(uri: str, name: str = "kserve-container") -> dict[str, Any]:
    return {"name": name, "image": "srv", "env": [{"name": "X", "value": "1"},
                                                  {"name": "STORAGE_URI", "value": uri}]}  # fmt: skip


def location_spec(location: str, uri: str) -> dict[str, Any]:
    if location == "model":
        return {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": uri}}
    if location == "env":
        return {"containers": [kserve_container(uri)]}
    if location == "storageUris":
        return {"storageUris": [{"uri": uri, "mountPath": "/mnt/models"}]}
    return {location: {"storageUri": uri}}


LOCATIONS = ["model", "env", "storageUris", *FRAMEWORKS]


@pytest.mark.parametrize("component", ["predictor", "transformer", "explainer"])
@pytest.mark.parametrize("location", LOCATIONS)
def test_every_location_in_every_component(location: str, component: str) -> None:
    record = extract(isvc({component: location_spec(location, URI)}))
    assert uris(record) == {component: (URI,)}
    assert record.problems == ()
    assert (record.namespace, record.name, record.uid) == ("team-a", "llm", "u-1")
    assert record.source == "isvc team-a/llm"


def test_oci_native_kept_and_duplicates_merged_in_order() -> None:
    native = f"oci+native://registry.example.com/models/llama@{DIGEST}"
    spec = {
        "predictor": {
            "model": {"storageUri": URI},
            "containers": [kserve_container(URI)],
            "storageUris": [{"uri": native}, {"uri": URI2}, {"uri": URI}],
        }
    }
    assert uris(extract(isvc(spec))) == {"predictor": (URI, native, URI2)}


def test_storage_uri_env_only_on_serving_container() -> None:
    spec = {"predictor": {"containers": [kserve_container(URI, name="sidecar"),
                                         {"name": "kserve-container", "env": []}]}}  # fmt: skip
    assert extract(isvc(spec)).components == ()


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/model", "gs://bucket/m", "hf://org/model", "pvc://claim/path",
     f"oci+fetch://registry.example.com/m@{DIGEST}", "https://example.com/m.tar", "", "OCI"],
)  # fmt: skip
def test_non_image_uris_ignored(uri: str) -> None:
    record = extract(isvc({"predictor": {"model": {"storageUri": uri}}}))
    assert record == IsvcModels("team-a", "llm", "u-1")


@pytest.mark.parametrize(
    "uri", ["oci://", "oci://registry.example.com/UPPER@" + DIGEST, "oci://r.io/m@sha256:short"]
)
def test_malformed_oci_uri_reported_not_raised(uri: str) -> None:
    spec = {"predictor": {"model": {"storageUri": uri}, "storageUris": [{"uri": URI}]}}
    record = extract(isvc(spec))
    assert uris(record) == {"predictor": (URI,)}
    assert [p.reason for p in record.problems] == ["InvalidModelURI"]
    assert record.problems[0].message.startswith("predictor: ")


@pytest.mark.parametrize(
    ("annotation", "min_replicas", "priority", "problem"),
    [
        (None, None, 10, None),
        ("42", None, 42, None),
        (" -3 ", 2, -3, None),
        ("42", 0, 47, None),
        (None, 0, 15, None),
        ("high", 1, 10, "InvalidPriority"),
        ("1.5", 0, 15, "InvalidPriority"),
        ("", None, 10, "InvalidPriority"),
        (None, -1, 10, "InvalidSpec"),
        (None, "0", 10, "InvalidSpec"),
    ],
)
def test_priority_annotation_and_scale_to_zero_boost(
    annotation: str | None, min_replicas: object, priority: int, problem: str | None
) -> None:
    predictor: dict[str, Any] = {"model": {"storageUri": URI}}
    if min_replicas is not None:
        predictor["minReplicas"] = min_replicas
    annotations = None if annotation is None else {"modelcar-prefetcher.io/priority": annotation}
    record = extract(isvc({"predictor": predictor}, annotations))
    assert record.components[0].priority == priority
    assert record.components[0].scales_to_zero == (min_replicas == 0)
    assert [p.reason for p in record.problems] == ([problem] if problem else [])


def test_custom_priority_annotation_and_per_component_boost() -> None:
    spec = {"predictor": {"model": {"storageUri": URI}, "minReplicas": 0},
            "transformer": {"containers": [kserve_container(URI2)], "minReplicas": 3}}  # fmt: skip
    record = extract_models(
        isvc(spec, {"example.com/prio": "7"}),
        default_priority=0,
        scale_to_zero_boost=100,
        priority_annotation="example.com/prio",
    )
    assert [(c.name, c.min_replicas, c.priority) for c in record.components] == [
        ("predictor", 0, 107),
        ("transformer", 3, 7),
    ]


def test_scheduling_constraints_and_pull_identity() -> None:
    predictor = {
        "model": {"storageUri": URI, "resources": {"limits": {"nvidia.com/gpu": "2", "cpu": "4"}}},
        "containers": [{"name": "agent", "resources": {"requests": {"example.com/fpga": "1"}}}],
        "nodeSelector": {"gpu": "a100", "zone": "z1"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "mem", "operator": "Gt", "values": ["80"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
            ]}}},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "dedicated", "value": "ml", "tolerationSeconds": 5}],
        "serviceAccountName": "puller",
        "imagePullSecrets": [{"name": "regcred"}, {"name": "other"}],
    }  # fmt: skip
    (component,) = extract(isvc({"predictor": predictor})).components
    constraints = component.constraints
    assert constraints.node_selector == (("gpu", "a100"), ("zone", "z1"))
    assert constraints.required_terms == (
        Term(match_expressions=(Requirement("mem", "Gt", ("80",)),)),
        Term(match_fields=(Requirement("metadata.name", "In", ("n1",)),)),
    )
    assert constraints.tolerations == (
        Toleration("nvidia.com/gpu", "Exists", "", "NoSchedule"),
        Toleration("dedicated", "Equal", "ml", ""),
    )
    assert constraints.resources == (("example.com/fpga", Fraction(1)), ("nvidia.com/gpu", Fraction(2)))
    assert component.service_account == "puller"
    assert component.image_pull_secrets == ("regcred", "other")


@pytest.mark.parametrize(
    ("predictor", "expected"),
    [
        ({"model": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}, 1),
        ({"pytorch": {"resources": {"requests": {"nvidia.com/gpu": "1"}}}}, 1),
        # the serving container described twice: counted once, the larger value
        ({"model": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
          "containers": [{"name": "kserve-container",
                          "resources": {"limits": {"nvidia.com/gpu": "2"}}}]}, 2),
        # separate containers add up
        ({"containers": [{"name": "a", "resources": {"limits": {"nvidia.com/gpu": "1"}}},
                         {"name": "b", "resources": {"limits": {"nvidia.com/gpu": "3"}}}]}, 4),
        ({"model": {"resources": {"limits": {"nvidia.com/gpu": "0"}}}}, None),
        ({"model": {"resources": {"limits": {"cpu": "8", "memory": "64Gi",
                                             "hugepages-2Mi": "1Gi"}}}}, None),
    ],
)  # fmt: skip
def test_extended_resource_requests(predictor: dict[str, Any], expected: int | None) -> None:
    predictor = {**predictor, "storageUris": [{"uri": URI}]}
    (component,) = extract(isvc({"predictor": predictor})).components
    wanted = dict(component.constraints.resources).get("nvidia.com/gpu")
    assert wanted == (None if expected is None else Fraction(expected))
    assert all("/" in name for name, _ in component.constraints.resources)


def test_bad_quantity_reported() -> None:
    predictor = {"model": {"storageUri": URI, "resources": {"limits": {"nvidia.com/gpu": "lots"}}}}
    record = extract(isvc({"predictor": predictor}))
    assert record.components[0].constraints.resources == ()
    assert [p.reason for p in record.problems] == ["InvalidSpec"]


def test_no_required_affinity_is_none_and_empty_terms_are_kept() -> None:
    base = {"model": {"storageUri": URI}}
    plain = extract(isvc({"predictor": {**base, "affinity": {"nodeAffinity": {}}}}))
    assert plain.components[0].constraints.required_terms is None
    empty: dict[str, Any] = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    record = extract(isvc({"predictor": {**base, "affinity": {"nodeAffinity": empty}}}))
    assert record.components[0].constraints.required_terms == ()


def _leaves(value: object) -> list[object]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [leaf for f in dataclasses.fields(value) for leaf in _leaves(getattr(value, f.name))]
    if isinstance(value, tuple):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def test_record_is_compact_and_detached_from_input() -> None:
    spec = {"predictor": {"model": {"storageUri": URI, "resources": {"limits": {"a.io/x": "1"}}},
                          "nodeSelector": {"k": "v"}, "minReplicas": 0,
                          "tolerations": [{"operator": "Exists"}]}}  # fmt: skip
    obj = isvc(spec, {"modelcar-prefetcher.io/priority": "1"})
    record = extract(obj)
    assert all(isinstance(leaf, str | int | Fraction | type(None)) for leaf in _leaves(record))
    obj["spec"]["predictor"]["nodeSelector"]["k"] = "changed"
    assert record.components[0].constraints.node_selector == (("k", "v"),)
    hash(record)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.sampled_from([URI, "oci://bad", "s3://b", "kserve-container", "STORAGE_URI", "1", "0"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["predictor", "model", "storageUri", "containers", "env", "name", "value",
                         "storageUris", "uri", "resources", "limits", "nvidia.com/gpu", "minReplicas",
                         "nodeSelector", "affinity", "tolerations", "metadata", "annotations",
                         "modelcar-prefetcher.io/priority", "spec", "pytorch"]),
        children, max_size=5),
    max_leaves=30,
)  # fmt: skip


@given(JSON)
def test_never_raises_on_arbitrary_json(obj: object) -> None:
    record = extract(obj if isinstance(obj, dict) else {"spec": obj})
    for component in record.components:
        assert component.uris and all(uri.startswith("oci") for uri in component.uris)


def _component(name: str, uri: str, priority: int, **constraints: Any) -> Component:
    return Component(name, (uri,), Constraints(**constraints), priority=priority)


def test_select_keeps_fitting_models_and_explains_the_rest() -> None:
    gpu_node = NodeInfo("n1", {"gpu": "a100"}, (Taint("nvidia.com/gpu", "present"),),
                        {"nvidia.com/gpu": Fraction(1)})  # fmt: skip
    tolerate = (Toleration("nvidia.com/gpu", "Exists"),)
    records = [
        IsvcModels("a", "fits", components=(
            _component("predictor", URI, 5, tolerations=tolerate,
                       resources=(("nvidia.com/gpu", Fraction(1)),)),
            _component("transformer", URI, 9, tolerations=tolerate),
        )),
        IsvcModels("a", "big", components=(
            _component("predictor", URI2, 1, tolerations=tolerate,
                       resources=(("nvidia.com/gpu", Fraction(2)),)),)),
        IsvcModels("b", "untolerated", components=(_component("predictor", URI2, 1),)),
    ]  # fmt: skip
    selection = select(records, gpu_node)
    assert selection.requests == (ModelRequest(URI, 9, "isvc a/fits"),)
    assert [(e.source, e.uri, e.reason) for e in selection.excluded] == [
        ("isvc a/big", URI2, "needs nvidia.com/gpu=2, node has 1"),
        ("isvc b/untolerated", URI2, "untolerated taint nvidia.com/gpu=present:NoSchedule"),
    ]
    ignoring = select(records[2:], gpu_node, ignore_taints=frozenset({"nvidia.com/gpu"}))
    assert ignoring.requests == (ModelRequest(URI2, 1, "isvc b/untolerated"),)
