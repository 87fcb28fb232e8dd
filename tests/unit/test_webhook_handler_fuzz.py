"""The AdmissionReview handler never raises and always answers a valid AdmissionReview v1."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from prefetcher.webhook.config import WebhookConfig
from prefetcher.webhook.handler import Outcome, handle_review
from tests.support.admission import admission_review
from tests.support.jsonpatch import apply_patch

CONFIG = WebhookConfig()
CONFIGS = [CONFIG, *(dataclasses.replace(CONFIG, modelcar_mode=m) for m in ("sidecar", "image-volume"))]
KSERVE = "internal.serving.kserve.io/storage-initializer-sourceuri"
PINNED = "oci://quay.io/acme/llama@sha256:" + "0" * 64
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pod_review(uid: str = "0b7c-uid", pod: Any = None, **request: Any) -> dict[str, Any]:
    if pod is None:
        pod = {
            "metadata": {"name": "p", "annotations": {KSERVE: PINNED}},
            "spec": {"containers": [{"name": "kserve-container", "image": "runtime:1"}]},
        }
    return admission_review(pod, uid=uid, namespace="default", **request)


def check_response(document: Any, outcome: str, *, uid: str | None = None) -> dict[str, Any]:
    """Assert ``document`` is a valid AdmissionReview v1 response; return its ``response``."""
    json.dumps(document, allow_nan=False)  # serializable as the server sends it
    assert outcome in set(Outcome)
    assert document["apiVersion"] == "admission.k8s.io/v1" and document["kind"] == "AdmissionReview"
    response = document["response"]
    assert set(response) <= {"uid", "allowed", "status", "patch", "patchType", "warnings"}
    assert isinstance(response["uid"], str) and isinstance(response["allowed"], bool)
    if uid is not None:
        assert response["uid"] == uid
    if "patch" in response:
        assert response["allowed"] and response["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(response["patch"], validate=True))
        assert isinstance(ops, list) and ops
        assert all(op["op"] in ("add", "replace") and op["path"].startswith("/spec/") for op in ops)
    if not response["allowed"]:
        status = response["status"]
        assert status["code"] in (400, 403) and status["message"].startswith("modelcar-prefetcher: ")
    for warning in response.get("warnings", []):
        assert isinstance(warning, str) and 0 < len(warning) <= 240 and warning.isprintable()
    return dict(response)


def review_bytes(document: Any) -> bytes:
    return json.dumps(document).encode()


@FUZZ
@given(body=st.binary(max_size=2048))
def test_arbitrary_bytes(body: bytes) -> None:
    response, outcome = handle_review(body, config=CONFIG)
    check_response(response, outcome)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)


@FUZZ
@given(document=_json)
def test_arbitrary_json(document: Any) -> None:
    response, outcome = handle_review(review_bytes(document), config=CONFIG)
    check_response(response, outcome)
    assert outcome == "invalid"


# Paths into a valid review that the fuzzer replaces with arbitrary JSON.
_PATHS = [
    ("apiVersion",),
    ("kind",),
    ("request",),
    ("request", "uid"),
    ("request", "kind"),
    ("request", "kind", "kind"),
    ("request", "resource"),
    ("request", "operation"),
    ("request", "subResource"),
    ("request", "object"),
    ("request", "object", "metadata"),
    ("request", "object", "metadata", "annotations"),
    ("request", "object", "metadata", "annotations", KSERVE),
    ("request", "object", "metadata", "annotations", "modelcar-prefetcher.io/model-uri"),
    ("request", "object", "metadata", "annotations", "modelcar-prefetcher.io/container"),
    ("request", "object", "metadata", "annotations", "modelcar-prefetcher.io/mount-path"),
    ("request", "object", "spec"),
    ("request", "object", "spec", "containers"),
    ("request", "object", "spec", "containers", 0),
    ("request", "object", "spec", "containers", 0, "name"),
    ("request", "object", "spec", "containers", 0, "env"),
    ("request", "object", "spec", "containers", 0, "volumeMounts"),
    ("request", "object", "spec", "containers", 0, "securityContext"),
    ("request", "object", "spec", "containers", 0, "securityContext", "runAsUser"),
    ("request", "object", "spec", "initContainers"),
    ("request", "object", "spec", "volumes"),
    ("request", "object", "spec", "securityContext"),
    ("request", "object", "spec", "securityContext", "runAsNonRoot"),
    ("request", "object", "spec", "hostPID"),
    ("request", "object", "spec", "shareProcessNamespace"),
]


def _child(node: Any, key: Any) -> tuple[bool, Any]:
    if isinstance(node, dict) and isinstance(key, str):
        return key in node, node.get(key)
    if isinstance(node, list) and isinstance(key, int):
        return key < len(node), node[key] if key < len(node) else None
    return False, None


def _replace(document: Any, path: tuple[Any, ...], value: Any) -> None:
    node = document
    for key in path[:-1]:
        found, node = _child(node, key)
        if not found:
            return
    found, _ = _child(node, path[-1])
    if found or (isinstance(node, dict) and isinstance(path[-1], str)):
        node[path[-1]] = value


@FUZZ
@given(
    changes=st.lists(st.tuples(st.sampled_from(_PATHS), _json), min_size=1, max_size=4),
    config=st.sampled_from(CONFIGS),
)
def test_structurally_wrong_reviews(
    changes: list[tuple[tuple[Any, ...], Any]], config: WebhookConfig
) -> None:
    document = pod_review()
    for path, value in changes:
        _replace(document, path, value)
    response, outcome = handle_review(review_bytes(document), config=config)
    uid = document.get("request", {}).get("uid") if isinstance(document.get("request"), dict) else None
    answer = check_response(response, outcome, uid=uid if isinstance(uid, str) else None)
    assert outcome != "error", answer
    event(outcome)
    if outcome == "mutated":
        patched = apply_patch(document["request"]["object"], json.loads(base64.b64decode(answer["patch"])))
        again, second = handle_review(review_bytes(pod_review(pod=patched)), config=config)
        assert second == "unchanged", again


def test_a_valid_review_is_mutated_and_echoes_the_uid() -> None:
    response, outcome = handle_review(review_bytes(pod_review(uid="abc")), config=CONFIG)
    assert outcome == "mutated"
    check_response(response, outcome, uid="abc")


def _with_env(env: list[Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "annotations": {KSERVE: PINNED}},
        "spec": {"containers": [{"name": "kserve-container", "image": "runtime:1", "env": env}]},
    }


@pytest.mark.parametrize(
    ("body", "outcome", "code"),
    [
        (b"", "invalid", 400),
        (b"\xff\xfe", "invalid", 400),
        (b"[" * 100_000, "invalid", 400),
        (review_bytes({**pod_review(), "apiVersion": "admission.k8s.io/v1beta1"}), "invalid", 400),
        (review_bytes(pod_review(uid="")), "invalid", 400),
        (review_bytes(pod_review(object=None)), "invalid", 400),
        (review_bytes(pod_review(operation="UPDATE")), "ignored", None),
        (review_bytes(pod_review(subResource="status")), "ignored", None),
        (
            review_bytes(pod_review(kind={"group": "apps", "version": "v1", "kind": "Deployment"})),
            "ignored",
            None,
        ),
        (review_bytes(pod_review(pod={"metadata": {"annotations": {KSERVE: "oci://BAD"}}})), "denied", 403),
        (review_bytes(pod_review(pod={"metadata": {}})), "unchanged", None),
        (review_bytes(pod_review(pod=_with_env([{"name": {"a": 1}}]))), "denied", 403),
        (review_bytes(pod_review(pod=_with_env([{"name": ["a"]}, {"value": "x"}]))), "denied", 403),
        (review_bytes(pod_review(pod=_with_env([{"value": "no name"}]))), "denied", 403),
    ],
)
def test_documented_choices_for_bad_input(body: bytes, outcome: str, code: int | None) -> None:
    response, got = handle_review(body, config=CONFIG)
    answer = check_response(response, got)
    assert got == outcome
    assert answer.get("status", {}).get("code") == code
    assert answer["allowed"] is (code is None)


def test_uid_is_echoed_even_when_the_review_is_invalid() -> None:
    document = pod_review(uid="keep-me")
    document["kind"] = "Other"
    response, _ = handle_review(review_bytes(document), config=CONFIG)
    assert response["response"]["uid"] == "keep-me"


def test_non_pod_objects_are_allowed_with_a_warning() -> None:
    kind = {"group": "apps", "version": "v1", "kind": "Deployment"}
    response, _ = handle_review(review_bytes(pod_review(kind=kind)), config=CONFIG)
    assert "apps/v1/Deployment" in response["response"]["warnings"][0]


def test_the_review_is_not_modified() -> None:
    document = pod_review()
    before = copy.deepcopy(document)
    handle_review(review_bytes(document), config=CONFIG)
    assert document == before
