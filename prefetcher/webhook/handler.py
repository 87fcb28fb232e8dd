"""AdmissionReview v1 in, AdmissionReview v1 out. Pure: no I/O, no logging, never raises.

Choices for input that is not a Pod CREATE the webhook can act on:

- a body that is not an AdmissionReview v1 with a ``request.uid`` (bad JSON, wrong apiVersion or
  kind, missing request): ``allowed: false`` with status code 400 and the reason, the request uid
  echoed whenever it could be read. Only the API server calls this endpoint, so such a body is a
  bug or a probe, and answering "allowed" to something unreadable would hide it;
- a well-formed review of another kind, resource, subresource or operation: allowed unchanged,
  with a warning when it is not a Pod (the webhook configuration should not have sent it; denying
  would block objects the webhook has no opinion on);
- a Pod that asks to be wired but cannot be: ``allowed: false`` with code 403 and the reason;
- an unexpected error in the patch builder: ``allowed: false`` with code 400 and the error, so a
  bug shows as a clear message rather than a pod started without its model. Only input reaches
  the builder, so such an error is the pod's shape meeting a check the builder lacks: a 4xx, as
  every answer here, never a 5xx (which reads as the webhook being down).

The outcome label returned with every response is an ``Outcome``, bounded for metrics.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from prefetcher.webhook.config import WebhookConfig
from prefetcher.webhook.patch import Mutation, build_patch

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
# The API server truncates longer warnings; keep ours whole and printable.
MAX_WARNING_CHARS = 240
MAX_MESSAGE_CHARS = 1024
Response = dict[str, Any]


class Outcome(StrEnum):
    """What became of a review: the bounded ``outcome`` label of the request metric."""

    MUTATED = "mutated"
    UNCHANGED = "unchanged"
    IGNORED = "ignored"
    DENIED = "denied"
    INVALID = "invalid"
    ERROR = "error"


class _Invalid(Exception):
    def __init__(self, message: str, uid: str = "") -> None:
        super().__init__(message)
        self.uid = uid


def handle_review(body: bytes | bytearray, *, config: WebhookConfig) -> tuple[Response, Outcome]:
    """The AdmissionReview response to ``body`` and its outcome label; never raises."""
    try:
        request = _parse(body)
    except _Invalid as invalid:
        return review(invalid.uid, allowed=False, code=400, message=str(invalid)), Outcome.INVALID
    uid = request["uid"]
    try:
        return _decide(request, uid, config)
    except Exception as error:  # the contract is "never raises": report the bug instead
        message = f"cannot wire this pod: {type(error).__name__}: {error}"
        return review(uid, allowed=False, code=400, message=message), Outcome.ERROR


def _parse(body: bytes | bytearray) -> Mapping[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise _Invalid(f"body is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise _Invalid("body is not an AdmissionReview object")
    request = document.get("request")
    uid = request.get("uid") if isinstance(request, dict) else None
    uid = uid if isinstance(uid, str) else ""
    if document.get("apiVersion") != API_VERSION or document.get("kind") != KIND:
        raise _Invalid(f"expected apiVersion {API_VERSION} and kind {KIND}", uid)
    if not isinstance(request, dict):
        raise _Invalid("AdmissionReview has no request", uid)
    if not uid:
        raise _Invalid("AdmissionReview request has no uid", uid)
    return request


def _decide(request: Mapping[str, Any], uid: str, config: WebhookConfig) -> tuple[Response, Outcome]:
    kind = request.get("kind")
    resource = request.get("resource")
    is_pod = (
        isinstance(kind, dict)
        and (kind.get("group"), kind.get("version"), kind.get("kind")) == ("", "v1", "Pod")
        and isinstance(resource, dict)
        and resource.get("resource") == "pods"
    )
    if not is_pod:
        warning = f"modelcar-prefetcher only wires core/v1 Pods; got {_describe(kind)}, left unchanged"
        return review(uid, allowed=True, warnings=[warning]), Outcome.IGNORED
    if request.get("operation") != "CREATE" or request.get("subResource"):
        return review(uid, allowed=True), Outcome.IGNORED
    pod = request.get("object")
    if not isinstance(pod, dict):
        message = "Pod CREATE review has no object"
        return review(uid, allowed=False, code=400, message=message), Outcome.INVALID
    return _respond(uid, build_patch(pod=pod, config=config))


def _respond(uid: str, mutation: Mutation) -> tuple[Response, Outcome]:
    warnings = list(mutation.warnings)
    if mutation.denial is not None:
        denied = review(uid, allowed=False, code=403, message=mutation.denial, warnings=warnings)
        return denied, Outcome.DENIED
    if not mutation.patch:
        return review(uid, allowed=True, warnings=warnings), Outcome.UNCHANGED
    return review(uid, allowed=True, patch=list(mutation.patch), warnings=warnings), Outcome.MUTATED


def review(
    uid: str,
    *,
    allowed: bool,
    code: int | None = None,
    message: str = "",
    patch: list[dict[str, Any]] | None = None,
    warnings: list[str] | None = None,
) -> Response:
    """An AdmissionReview v1 response document."""
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if code is not None:
        text = _printable(f"modelcar-prefetcher: {message}", MAX_MESSAGE_CHARS)
        response["status"] = {"code": code, "message": text}
    if patch:
        encoded = json.dumps(patch, separators=(",", ":")).encode()
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(encoded).decode("ascii")
    if warnings:
        response["warnings"] = [_printable(w, MAX_WARNING_CHARS) for w in warnings]
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def _describe(kind: Any) -> str:
    if not isinstance(kind, dict):
        return "a request without kind"
    parts = [str(kind.get(key, "")) for key in ("group", "version", "kind")]
    return _printable("/".join(parts), 80)


def _printable(text: str, limit: int) -> str:
    clean = "".join(ch if ch.isprintable() else " " for ch in text)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"
