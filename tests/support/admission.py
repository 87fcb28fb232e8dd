"""AdmissionReview v1 documents of a Pod CREATE, shared by the webhook's tests and benchmark."""

from __future__ import annotations

from typing import Any


def admission_review(pod: Any, *, uid: str, namespace: str = "models", **request: Any) -> dict[str, Any]:
    """An AdmissionReview v1 asking to create ``pod``; ``request`` adds or overrides request fields."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "object": pod,
            **request,
        },
    }
