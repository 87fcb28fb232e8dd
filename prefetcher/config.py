"""The agent's configuration (the ConfigMap SREs edit) and its models file.

Settings are declared with ``option`` and loaded by ``prefetcher.config_fields``, the loader the
webhook's configuration shares; each one's ``doc`` is its line of the README's reference, which a
test keeps equal to ``reference_table``. YAML keys are the camelCase of the field names.

A new nested section (``fleet:``, say) is a frozen dataclass of ``option`` fields added to ``Config``
with ``section(FleetConfig)``; if it applies without a restart, its prefix goes into ``LIVE_KEYS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from prefetcher.config_fields import (
    Between,
    HostPort,
    build,
    flatten,
    option,
    parse_yaml,
    rows,
    section,
    table,
)
from prefetcher.core.model import ModelRequest
from prefetcher.errors import ConfigError


class TagPolicy(StrEnum):
    """What the agent does with a model reference that names a tag but no digest."""

    RESOLVE = "resolve"
    ALLOW = "allow"
    REJECT = "reject"


class LogFormat(StrEnum):
    """How the agent writes its log lines."""

    TEXT = "text"
    JSON = "json"


class LogLevel(StrEnum):
    """The least severe log level written."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class BudgetConfig:
    """How much of the image filesystem the agent may fill."""

    max_usage_percent: float = option(
        80.0,
        "Pull only while the image filesystem stays at or under this usage percent; keep it below "
        "kubelet's imageGCHighThresholdPercent (85 by default).",
        Between(1, 100),
    )
    unpack_factor: float = option(
        2.0,
        "Disk bytes a pull costs per compressed byte (containerd keeps the compressed blobs and the "
        "unpacked snapshot).",
        Between(1, 10),
    )


@dataclass(frozen=True)
class PullConfig:
    """How pulls run."""

    concurrency: int = option(2, "Pulls running at once.", Between(1, 64))
    timeout_seconds: float = option(
        14400.0, "Longest a single pull may take in total.", Between(1, 7 * 86400)
    )
    stall_seconds: float = option(
        300.0, "Cancel a pull when the image filesystem has not grown for this long.", Between(1, 86400)
    )
    tag_policy: TagPolicy = option(
        TagPolicy.RESOLVE,
        "A tag-only reference is `resolve`d to a digest (and warned about), `allow`ed as is, or `reject`ed.",
    )
    backoff_base_seconds: float = option(
        30.0, "First retry delay after a failed pull; doubles per failure.", Between(0, 86400)
    )
    backoff_max_seconds: float = option(1800.0, "Longest retry delay.", Between(0, 7 * 86400))


@dataclass(frozen=True)
class EvictionConfig:
    """Removal of images the agent pulled and no longer needs."""

    enabled: bool = option(True, "Remove images the agent pulled once no source wants them, or to make room.")
    grace_seconds: float = option(
        3600.0,
        "How long a model stays after its last source stopped wanting it (absorbs flapping).",
        Between(0, 365 * 86400),
    )


@dataclass(frozen=True)
class RegistriesConfig:
    """How the agent reaches registries before pulling (to pin tags and size images)."""

    insecure: tuple[str, ...] = option((), "Registries (host:port) reached over plain HTTP.")
    auth_file: str = option("", "Docker config.json with registry credentials; empty: node credentials only.")
    ca_file: str = option("", "PEM bundle of extra CAs for registries; empty: system CAs.")
    timeout_seconds: float = option(30.0, "Timeout of each registry request.", Between(1, 600))
    platform: str = option("", "Platform picked from image indexes (os/arch[/variant]); empty: this node's.")


@dataclass(frozen=True)
class CredentialsConfig:
    """Registry credentials beyond the node's own."""

    service_account_pull_secrets: bool = option(
        False,
        "For a model of an InferenceService, also use its component's image pull secrets (its "
        "`imagePullSecrets`, else its ServiceAccount's), read on demand; needs "
        "`deploy/agent/optional/pull-secrets-role.yaml` bound in each such namespace.",
    )


@dataclass(frozen=True)
class KubernetesConfig:
    """Where models come from in a cluster, and how the agent reports."""

    namespaces: tuple[str, ...] = option((), "Namespaces whose InferenceServices are followed; empty: all.")
    node_selector: dict[str, str] = option(
        {}, "Labels a node must have for the agent to warm anything on it."
    )
    default_priority: int = option(
        0, "Priority of a model whose InferenceService has no priority annotation."
    )
    priority_annotation: str = option(
        "modelcar-prefetcher.io/priority", "InferenceService annotation holding an integer priority."
    )
    scale_to_zero_boost: int = option(
        100,
        "Added to the priority of models of InferenceServices with "
        "minReplicas 0, whose cold starts hurt most.",
    )
    startup_taint: str = option("", "Taint key removed from this node once its models are warm; empty: off.")
    startup_taint_deadline_seconds: float = option(
        1800.0,
        "Remove the start-up taint after this long even if models are not all warm.",
        Between(0, 86400),
    )
    models_warm_condition: str = option(
        "modelcar-prefetcher.io/ModelsWarm",
        "Node condition type the agent keeps on its node: True once every desired model is warm or "
        "skipped for a stated reason (for a NodeReadinessRule to gate a taint on); empty: off.",
    )
    warmth_events_period_seconds: float = option(
        30.0,
        "How often the one agent holding the reporter Lease counts, per InferenceService, the nodes "
        "where it is warm and records a `ModelWarmth` Event when that changed; 0: off.",
        Between(0, 3600),
    )


@dataclass(frozen=True)
class FleetConfig:
    """Fleet-wide pull pacing: nodes take turns per model digest through Leases (operator guide, 7)."""

    pacing: bool = option(
        True,
        "Take turns with the other nodes pulling the same digest; `false` pulls as soon as planned. "
        "Never delays a model no other node pulls.",
    )
    seed_pulls: int = option(
        1,
        "Nodes that may pull a digest at once while no node holds it warm (from the origin).",
        Between(1, 1000),
    )
    max_concurrent_pulls: int = option(
        10,
        "Nodes that may pull a digest at once once a node holds it warm; size for the pull-through "
        "cache or P2P mirror that serves them.",
        Between(1, 100_000),
    )
    max_concurrent_pulls_per_registry: int = option(
        0,
        "Pulls from one registry host at once across the fleet, all models together; 0: no cap.",
        Between(0, 100_000),
    )
    lease_duration_seconds: float = option(
        60.0,
        "A turn not renewed for this long (holder dead or pull stalled) passes to another node.",
        Between(5, 86400),
    )
    max_wait_seconds: float = option(
        3600.0,
        "After waiting this long for a turn, pull anyway (with a PacingDeadlinePassed Event).",
        Between(0, 7 * 86400),
    )
    poll_seconds: float = option(10.0, "How often a node waiting for a turn looks again.", Between(1, 3600))


@dataclass(frozen=True)
class Config:
    """The agent's configuration."""

    cri_endpoint: str = option(
        "", "CRI socket (unix:///…); empty: the first of containerd's and CRI-O's usual sockets that exists."
    )
    cri_timeout_seconds: float = option(
        10.0, "Timeout of each CRI call other than PullImage.", Between(1, 600)
    )
    image_fs_path: str = option(
        "/var/lib/containerd",
        "A path on the filesystem holding the runtime's images; "
        "its usage is what the budget governs, measured as kubelet does.",
    )
    state_file: str = option(
        "/var/lib/modelcar-prefetcher/state.json",
        "Where the agent remembers what it pulled and its back-off state.",
    )
    resync_seconds: float = option(
        30.0, "Time between reconcile passes when nothing changes.", Between(1, 86400)
    )
    listen_address: str = option("0.0.0.0:8080", "Address of /metrics, /healthz and /readyz.", HostPort())
    log_format: LogFormat = option(LogFormat.TEXT, "`text` or `json`.")
    log_level: LogLevel = option(LogLevel.INFO, "debug, info, warning or error.")
    budget: BudgetConfig = section(BudgetConfig)
    pull: PullConfig = section(PullConfig)
    eviction: EvictionConfig = section(EvictionConfig)
    registries: RegistriesConfig = section(RegistriesConfig)
    credentials: CredentialsConfig = section(CredentialsConfig)
    kubernetes: KubernetesConfig = section(KubernetesConfig)
    fleet: FleetConfig = section(FleetConfig)


# Read on every pass; any other key is read once at start-up, so changing it needs a restart.
LIVE_KEYS = ("resyncSeconds", "budget.", "pull.", "eviction.", "fleet.")


def load_config(text: str) -> Config:
    """Parse and validate a YAML configuration; raises ConfigError naming the bad key and value.

    An empty document is an error, not "all defaults": a truncated ConfigMap must not reset every
    setting. ``{}`` asks for the defaults.
    """
    data = parse_yaml(text, "config")
    if data is None:
        raise ConfigError("config is empty (write `{}` for all defaults)")
    return build(Config, data)


def load_models(text: str) -> tuple[ModelRequest, ...]:
    """Parse a models file: ``models: [{uri, priority}]``. URIs are checked later, one by one.

    An empty document is an error (a truncated file must not evict every model); ``models: []``
    asks for none.
    """
    data = parse_yaml(text, "models file")
    if data is None:
        raise ConfigError("models file is empty (write `models: []` for no models)")
    if not isinstance(data, Mapping) or not isinstance(data.get("models", []), list):
        raise ConfigError("models file: expected a mapping with a list under `models`")
    for key in data:
        if key != "models":
            raise ConfigError(f"{key}: unknown key (a models file holds only `models`)")
    requests = []
    for i, entry in enumerate(data.get("models") or []):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("uri"), str):
            raise ConfigError(f"models[{i}].uri: expected a string, got {entry!r}")
        unknown = set(entry) - {"uri", "priority"}
        if unknown:
            raise ConfigError(f"models[{i}].{sorted(unknown)[0]}: unknown key")
        priority = entry.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ConfigError(f"models[{i}].priority: expected an integer, got {priority!r}")
        requests.append(ModelRequest(entry["uri"], priority, f"models[{i}]"))
    return tuple(requests)


def restart_keys(started: Config, current: Config) -> tuple[str, ...]:
    """Keys whose value in ``current`` differs from ``started`` and that only a restart applies."""
    before, after = dict(flatten(started)), dict(flatten(current))
    return tuple(k for k in after if before[k] != after[k] and not k.startswith(LIVE_KEYS))


def reference_rows() -> list[tuple[str, str, str]]:
    """Every key of the configuration with its default (as shown in docs) and its doc."""
    return rows(Config)


def reference_table() -> str:
    """The configuration reference as a Markdown table (key, default, meaning)."""
    return table(Config)
