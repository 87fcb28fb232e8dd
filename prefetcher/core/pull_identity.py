"""Whose pull secrets a model of an InferenceService is pulled with, as kubelet would for its pods.

KServe copies a component's ``serviceAccountName`` and ``imagePullSecrets`` into its pods. The
ServiceAccount admission plugin adds the ServiceAccount's ``imagePullSecrets`` to a pod only when
the pod names none (plugin/pkg/admission/serviceaccount in kubernetes/kubernetes), and a pod with
no ``serviceAccountName`` runs as ``default``. Kubelet pulls with the secrets the pod ends up with.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefetcher.core.isvc import IsvcModels
from prefetcher.core.refs import parse_reference
from prefetcher.errors import InvalidReferenceError

DEFAULT_SERVICE_ACCOUNT = "default"


@dataclass(frozen=True, slots=True)
class PullIdentity:
    """The pod identity a component's models are pulled for: explicit secrets win over the account's."""

    namespace: str
    service_account: str
    image_pull_secrets: tuple[str, ...] = ()


def pull_identities(record: IsvcModels, registry: str) -> tuple[PullIdentity, ...]:
    """The identities of the components of ``record`` that name a model on ``registry``, in order."""
    found: dict[PullIdentity, None] = {}
    for component in record.components:
        if not any(_registry_of(uri) == registry for uri in component.uris):
            continue
        identity = PullIdentity(
            record.namespace,
            component.service_account or DEFAULT_SERVICE_ACCOUNT,
            component.image_pull_secrets,
        )
        found[identity] = None
    return tuple(found)


def _registry_of(uri: str) -> str:
    try:
        return parse_reference(uri).registry
    except InvalidReferenceError:  # extract_models keeps only valid URIs; be safe all the same
        return ""
