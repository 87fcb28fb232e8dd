"""The webhook's configuration: a YAML document of camelCase keys, loaded into a frozen dataclass.

Defaults are KServe's own names and values (``inferenceservice-config``, key ``storageInitializer``),
so a pod wired here looks to a serving runtime exactly like one KServe wires. The improvements over
upstream (native sidecar, digest discipline, offline env, hardened security context) each have a
key of their own. The loader is the agent's (``prefetcher.config_fields``): the same camelCase keys,
checks and error messages naming the key and value; unknown keys are errors, so a typo does not
silently fall back to a default. Unlike the agent's, an empty document gives the defaults.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from enum import StrEnum

from prefetcher.config_fields import Between, Env, Matches, Satisfies, build, option, parse_yaml
from prefetcher.core.quantity import UNSIGNED_QUANTITY
from prefetcher.errors import ConfigError


class ModelcarMode(StrEnum):
    """How the model image reaches the server container."""

    SIDECAR = "sidecar"
    NATIVE_SIDECAR = "native-sidecar"
    IMAGE_VOLUME = "image-volume"


class AdmissionTagPolicy(StrEnum):
    """What admission does with a model image named by tag rather than digest.

    Not the agent's ``pull.tagPolicy``: admission cannot resolve a tag, only let it through, warn
    or deny the pod.
    """

    ALLOW = "allow"
    WARN = "warn"
    DENY = "deny"


def check_model_path(path: str) -> str:
    """``path`` if usable as the model path, else ``ValueError`` saying why."""
    if not path.startswith("/") or posixpath.normpath(path) != path or "//" in path:
        raise ValueError("expected a normalized absolute path such as /mnt/models")
    if posixpath.dirname(path) == "/":
        raise ValueError("the path needs a parent directory other than / to mount the volume at")
    if any(ch in path for ch in ":\n\0\"'$\\`"):
        raise ValueError("the path may not contain quotes, $, \\, ` or :")
    return path


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_CONTAINER = Matches(_DNS_LABEL, "a container name (DNS label)")
_ANNOTATION = Matches(
    r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?",
    "an annotation key",
)
_ENV_NAME = Matches(r"[-._a-zA-Z][-._a-zA-Z0-9]*", "an environment variable name")
_MODEL_PATH = Satisfies(check_model_path, {"pattern": "^/"})


@dataclass(frozen=True)
class WebhookConfig:
    """How pods are wired; every field maps to the camelCase YAML key of the same name."""

    source_uri_annotation: str = option(
        "internal.serving.kserve.io/storage-initializer-sourceuri",
        "Pod annotation KServe sets to the model URI; pods whose value starts `oci://` are wired.",
        _ANNOTATION,
    )
    serving_containers: tuple[str, ...] = option(
        ("kserve-container", "worker-container"),
        "Candidate server containers, in order; the first one present in the pod is wired.",
        _CONTAINER,
    )
    additional_containers: tuple[str, ...] = option(
        ("transformer-container",),
        "Containers wired as well when present (KServe wires the transformer too).",
        _CONTAINER,
    )
    modelcar_container_name: str = option(
        "modelcar",
        "Name of the container that links the model; its presence means the pod is already wired.",
        _CONTAINER,
    )
    init_container_name: str = option(
        "modelcar-init",
        "Name of the init container that checks the pulled image holds a non-empty `/models`.",
        _CONTAINER,
    )
    volume_name: str = option(
        "kserve-provision-location",
        "Name of the shared volume (an emptyDir, or the image volume in image-volume mode).",
        Matches(_DNS_LABEL, "a volume name (DNS label)"),
    )
    model_path: str = option(
        "/mnt/models",
        "Where the server finds the model; the emptyDir is mounted at its parent directory.",
        _MODEL_PATH,
    )
    uid_modelcar: int | None = option(
        1010,
        "uid of the modelcar and server when the pod sets none; null leaves it to the platform.",
        Between(0, 2**31 - 1),
    )
    cpu_modelcar: str = option(
        "10m",
        "CPU request and limit of the modelcar containers (a Kubernetes quantity).",
        Matches(UNSIGNED_QUANTITY, "a Kubernetes quantity such as 10m"),
    )
    memory_modelcar: str = option(
        "15Mi",
        "Memory request and limit of the modelcar containers (a Kubernetes quantity).",
        Matches(UNSIGNED_QUANTITY, "a Kubernetes quantity such as 15Mi"),
    )
    serving_env: Env = option(
        (("MODEL_INIT_MODE", "async"),),
        "Environment set on wired containers, replacing any value they had (as KServe does).",
        _ENV_NAME,
    )
    offline_env: Env = option(
        (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")),
        "Environment keeping runtimes off model hubs, set unless present in `env`; `{}` disables.",
        _ENV_NAME,
    )
    modelcar_mode: ModelcarMode = option(
        ModelcarMode.NATIVE_SIDECAR,
        "`sidecar` (as KServe), `native-sidecar` (Kubernetes >= 1.29) or `image-volume`.",
    )
    tag_policy: AdmissionTagPolicy = option(
        AdmissionTagPolicy.WARN,
        "What to do with a model image named by tag rather than digest: allow, warn or deny.",
    )
    restricted_security_context: bool = option(
        True, 'Give injected containers a security context that passes the "restricted" Pod Security level.'
    )
    max_request_bytes: int = option(
        10 * 1024 * 1024, "Largest AdmissionReview body accepted, in bytes.", Between(1024, 64 * 1024 * 1024)
    )
    request_timeout_seconds: float = option(
        10.0,
        "Time allowed for a new connection's TLS handshake and first request, and for each request body.",
        Between(0.1, 300),
    )

    @property
    def mount_dir(self) -> str:
        """The directory the emptyDir is mounted at: the parent of ``model_path``."""
        return posixpath.dirname(self.model_path)


def load_webhook_config(text: str) -> WebhookConfig:
    """Parse a YAML document into a ``WebhookConfig``; raises ``ConfigError`` naming the key.

    An empty document gives the defaults, KServe's own names and values.
    """
    data = parse_yaml(text, "webhook config")
    config = build(WebhookConfig, {} if data is None else data, what="webhook config")
    if config.modelcar_container_name == config.init_container_name:
        raise ConfigError(
            "modelcarContainerName and initContainerName must differ,"
            f" both are {config.init_container_name!r}"
        )
    return config
