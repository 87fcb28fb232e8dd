"""The webhook's configuration: a YAML document of camelCase keys, loaded into a frozen dataclass.

Defaults are KServe's own names and values (``inferenceservice-config``, key ``storageInitializer``),
so a pod wired here looks to a serving runtime exactly like one KServe wires. The improvements over
upstream (native sidecar, digest discipline, offline env, hardened security context) each have a
key of their own. Unknown keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import yaml

from prefetcher.errors import ConfigError

MODES = ("sidecar", "native-sidecar", "image-volume")
TAG_POLICIES = ("allow", "warn", "deny")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_QUANTITY = re.compile(r"(\d+(\.\d*)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+)?")
_ANNOTATION = re.compile(
    r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)


@dataclass(frozen=True)
class WebhookConfig:
    """How pods are wired; every field maps to the camelCase YAML key of the same name."""

    source_uri_annotation: str = "internal.serving.kserve.io/storage-initializer-sourceuri"
    """Pod annotation KServe sets to the model URI; pods whose value starts ``oci://`` are wired."""
    serving_containers: tuple[str, ...] = ("kserve-container", "worker-container")
    """Candidate server containers, in order; the first one present in the pod is wired."""
    additional_containers: tuple[str, ...] = ("transformer-container",)
    """Containers wired as well when present (KServe wires the transformer too)."""
    modelcar_container_name: str = "modelcar"
    """Name of the container that links the model; its presence means the pod is already wired."""
    init_container_name: str = "modelcar-init"
    """Name of the init container that checks the pulled image holds a non-empty ``/models``."""
    volume_name: str = "kserve-provision-location"
    """Name of the shared volume (an emptyDir, or the image volume in image-volume mode)."""
    model_path: str = "/mnt/models"
    """Where the server finds the model; the emptyDir is mounted at its parent directory."""
    uid_modelcar: int | None = 1010
    """uid of the modelcar and server when the pod sets none; null leaves it to the platform."""
    cpu_modelcar: str = "10m"
    """CPU request and limit of the modelcar containers (a Kubernetes quantity)."""
    memory_modelcar: str = "15Mi"
    """Memory request and limit of the modelcar containers (a Kubernetes quantity)."""
    serving_env: tuple[tuple[str, str], ...] = (("MODEL_INIT_MODE", "async"),)
    """Environment set on wired containers, replacing any value they had (as KServe does)."""
    offline_env: tuple[tuple[str, str], ...] = (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"))
    """Environment keeping runtimes off model hubs, set unless present in ``env``; ``{}`` disables."""
    modelcar_mode: str = "native-sidecar"
    """``sidecar`` (as KServe), ``native-sidecar`` (Kubernetes >= 1.29) or ``image-volume``."""
    tag_policy: str = "warn"
    """What to do with a model image named by tag rather than digest: allow, warn or deny."""
    restricted_security_context: bool = True
    """Give injected containers a security context that passes the "restricted" Pod Security level."""
    max_request_bytes: int = 10 * 1024 * 1024
    """Largest AdmissionReview body accepted, in bytes."""
    request_timeout_seconds: float = 10.0
    """Time allowed for a new connection's TLS handshake and first request, and for each request body."""

    @property
    def mount_dir(self) -> str:
        """The directory the emptyDir is mounted at: the parent of ``model_path``."""
        return posixpath.dirname(self.model_path)


def camel(name: str) -> str:
    """The YAML key of a field name: ``uid_modelcar`` -> ``uidModelcar``."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


KEYS = {camel(f.name): f.name for f in fields(WebhookConfig)}


def load_webhook_config(text: str) -> WebhookConfig:
    """Parse a YAML document into a ``WebhookConfig``; raises ``ConfigError`` naming the key."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"webhook config is not valid YAML: {exc}") from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"webhook config must be a mapping, got {type(doc).__name__}")
    unknown = sorted(str(key) for key in doc if key not in KEYS)
    if unknown:
        raise ConfigError(f"unknown webhook config key {unknown[0]!r}; known: {sorted(KEYS)}")
    values = {KEYS[key]: _read(key, value) for key, value in doc.items()}
    config = WebhookConfig(**values)
    if config.modelcar_container_name == config.init_container_name:
        raise ConfigError(
            f"webhook config keys 'modelcarContainerName' and 'initContainerName' must differ,"
            f" both are {config.init_container_name!r}"
        )
    return config


def _read(key: str, value: Any) -> Any:
    reader = _READERS[key]
    try:
        return reader(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"webhook config key {key!r}: invalid value {value!r}: {exc}") from exc


def _text(pattern: re.Pattern[str], what: str) -> Callable[[Any], str]:
    def read(value: Any) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(f"expected {what}")
        return value

    return read


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError("expected a list of container names")
    return tuple(_text(_DNS_LABEL, "container names (DNS labels)")(item) for item in value)


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise TypeError("expected a mapping of variable names to string values")
    pairs = []
    for name, item in value.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name) or not isinstance(item, str):
            raise ValueError(f"expected NAME: 'string value', got {name!r}: {item!r}")
        pairs.append((name, item))
    return tuple(pairs)


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def read(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return str(value)

    return read


def _model_path(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected an absolute path")
    return check_model_path(value)


def check_model_path(path: str) -> str:
    """``path`` if usable as the model path, else ``ValueError`` saying why."""
    if not path.startswith("/") or posixpath.normpath(path) != path or "//" in path:
        raise ValueError("expected a normalized absolute path such as /mnt/models")
    if posixpath.dirname(path) == "/":
        raise ValueError("the path needs a parent directory other than / to mount the volume at")
    if any(ch in path for ch in ":\n\0\"'$\\`"):
        raise ValueError("the path may not contain quotes, $, \\, ` or :")
    return path


def _uid(value: Any) -> int | None:
    if value is None:
        return None
    return _int_between(0, 2**31 - 1)(value)


def _int_between(low: int, high: int) -> Callable[[Any], int]:
    def read(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("expected an integer")
        if not low <= value <= high:
            raise ValueError(f"expected an integer between {low} and {high}")
        return value

    return read


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("expected a number of seconds")
    if not 0.1 <= value <= 300:
        raise ValueError("expected between 0.1 and 300 seconds")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


_READERS: dict[str, Callable[[Any], Any]] = {
    "sourceUriAnnotation": _text(_ANNOTATION, "an annotation key"),
    "servingContainers": _names,
    "additionalContainers": _names,
    "modelcarContainerName": _text(_DNS_LABEL, "a container name (DNS label)"),
    "initContainerName": _text(_DNS_LABEL, "a container name (DNS label)"),
    "volumeName": _text(_DNS_LABEL, "a volume name (DNS label)"),
    "modelPath": _model_path,
    "uidModelcar": _uid,
    "cpuModelcar": _text(_QUANTITY, "a Kubernetes quantity such as 10m"),
    "memoryModelcar": _text(_QUANTITY, "a Kubernetes quantity such as 15Mi"),
    "servingEnv": _env,
    "offlineEnv": _env,
    "modelcarMode": _choice(MODES),
    "tagPolicy": _choice(TAG_POLICIES),
    "restrictedSecurityContext": _bool,
    "maxRequestBytes": _int_between(1024, 64 * 1024 * 1024),
    "requestTimeoutSeconds": _seconds,
}
