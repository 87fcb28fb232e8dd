"""Replaces KServe's storage initializer for an OCI model with the modelcar. Pure.

KServe with its OCI model modes off gives an ``oci://`` pod its storage initializer, which reads no
OCI images, with its volume mounted on the model path; left so, the pod cannot serve and the
webhook would deny it for the conflicting mount. Where KServe's annotation names the model and the
storage initializer's first argument is that same URI, the init container and those mounts go, and
the caller wires the modelcar in their place. KServe's webhook is reinvoked after ours
(``reinvocationPolicy: IfNeeded``) and adds its storage initializer again for as long as its
source-URI annotation is on the pod, so the annotation moves to ``REPLACED_ANNOTATION``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefetcher.webhook.config import WebhookConfig
from prefetcher.webhook.podview import PodView, canonical_path

# Where KServe's source-URI annotation goes when its storage initializer is replaced.
REPLACED_ANNOTATION = "modelcar-prefetcher.io/kserve-source-uri"
# KServe's init container for non-OCI storage; for one URI its args are [uri, model dir]
# (pkg/webhook/admission/pod/storage_initializer_injector.go).
STORAGE_INITIALIZER = "storage-initializer"
Op = dict[str, Any]


def replace_storage_initializer(
    view: PodView, *, annotation: str, uri: str, model_path: str, config: WebhookConfig
) -> tuple[list[Op], PodView]:
    """Operations removing KServe's storage initializer for ``uri`` and its volume's mounts on
    ``model_path``, and the pod as they leave it; none where KServe did not add one."""
    index = next((i for i, c in enumerate(view.init_containers) if _initializes(c, uri)), None)
    if index is None:
        return [], view
    ops: list[Op] = [
        {"op": "remove", "path": f"/metadata/annotations/{_pointer(annotation)}"},
        {"op": "add", "path": f"/metadata/annotations/{_pointer(REPLACED_ANNOTATION)}", "value": uri},
        {"op": "remove", "path": f"/spec/initContainers/{index}"},
    ]
    containers = []
    for number, container in enumerate(view.containers):
        mounts = view.mounts(number)
        on_model = [
            j
            for j, mount in enumerate(mounts)
            if mount.get("name") == config.volume_name
            and canonical_path(mount.get("mountPath")) == model_path
        ]
        base = f"/spec/containers/{number}/volumeMounts"
        ops += [{"op": "remove", "path": f"{base}/{j}"} for j in reversed(on_model)]
        kept = [mount for j, mount in enumerate(mounts) if j not in on_model]
        containers.append({**container, "volumeMounts": kept} if on_model else container)
    inits = [c for i, c in enumerate(view.init_containers) if i != index]
    return ops, PodView.read({"spec": {**view.spec, "containers": containers, "initContainers": inits}})


def _pointer(key: str) -> str:
    """``key`` as one JSON Pointer token (RFC 6901: ``~`` is ``~0``, ``/`` is ``~1``)."""
    return key.replace("~", "~0").replace("/", "~1")


def _initializes(container: Mapping[str, Any], uri: str) -> bool:
    """True for KServe's storage initializer fetching ``uri``."""
    args = container.get("args")
    first = args[0] if isinstance(args, list) and args else None
    return container["name"] == STORAGE_INITIALIZER and first == uri
