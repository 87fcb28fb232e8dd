"""Configuration as data: the agent's YAML document (the ConfigMap SREs edit) and the models file.

Each field's ``doc`` metadata is its one-line reference; ``reference_table`` renders them for the
README, and a test keeps the two equal. YAML keys are the camelCase of the field names. Unknown keys
are errors, so a typo in a ConfigMap is reported instead of silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from prefetcher.core.model import ModelRequest
from prefetcher.errors import ConfigError

Check = Callable[[Any], str | None]


def _opt(default: Any, doc: str, check: Check | None = None) -> Any:
    factory = (
        {"default_factory": lambda: dict(default)} if isinstance(default, dict) else {"default": default}
    )
    return field(**factory, metadata={"doc": doc, "check": check})


# Checks are small values rather than closures so that ``prefetcher.config_schema`` can state the
# same limits in the chart's values.schema.json.


@dataclass(frozen=True)
class Between:
    """A number within ``low`` and ``high`` inclusive."""

    low: float
    high: float

    def __call__(self, value: Any) -> str | None:
        ok = self.low <= value <= self.high
        return None if ok else f"must be between {self.low:g} and {self.high:g}"


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of strings."""

    choices: tuple[str, ...]

    def __call__(self, value: Any) -> str | None:
        return None if value in self.choices else f"must be one of {', '.join(self.choices)}"


@dataclass(frozen=True)
class HostPort:
    """``host:port`` with a port 0-65535 (``:8080`` listens on every interface)."""

    pattern: str = r"^.*:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"

    def __call__(self, value: Any) -> str | None:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            return 'must be host:port (port 0-65535; ":8080" listens on every interface)'
        return None


def _between(low: float, high: float) -> Check:
    return Between(low, high)


_host_port = HostPort()


def _one_of(*choices: str) -> Check:
    return OneOf(choices)


@dataclass(frozen=True)
class BudgetConfig:
    """How much of the image filesystem the agent may fill."""

    max_usage_percent: float = _opt(
        80.0,
        "Pull only while the image filesystem stays at or under this usage percent; keep it below "
        "kubelet's imageGCHighThresholdPercent (85 by default).",
        _between(1, 100),
    )
    unpack_factor: float = _opt(
        2.0,
        "Disk bytes a pull costs per compressed byte (containerd keeps the compressed blobs and the "
        "unpacked snapshot).",
        _between(1, 10),
    )


@dataclass(frozen=True)
class PullConfig:
    """How pulls run."""

    concurrency: int = _opt(2, "Pulls running at once.", _between(1, 64))
    timeout_seconds: float = _opt(14400.0, "Longest a single pull may take in total.", _between(1, 7 * 86400))
    stall_seconds: float = _opt(
        300.0, "Cancel a pull when the image filesystem has not grown for this long.", _between(1, 86400)
    )
    tag_policy: str = _opt(
        "resolve",
        "A tag-only reference is `resolve`d to a digest (and warned about), `allow`ed as is, or `reject`ed.",
        _one_of("resolve", "allow", "reject"),
    )
    backoff_base_seconds: float = _opt(
        30.0, "First retry delay after a failed pull; doubles per failure.", _between(0, 86400)
    )
    backoff_max_seconds: float = _opt(1800.0, "Longest retry delay.", _between(0, 7 * 86400))


@dataclass(frozen=True)
class EvictionConfig:
    """Removal of images the agent pulled and no longer needs."""

    enabled: bool = _opt(True, "Remove images the agent pulled once no source wants them, or to make room.")
    grace_seconds: float = _opt(
        3600.0,
        "How long a model stays after its last source stopped wanting it (absorbs flapping).",
        _between(0, 365 * 86400),
    )


@dataclass(frozen=True)
class RegistriesConfig:
    """How the agent reaches registries before pulling (to pin tags and size images)."""

    insecure: tuple[str, ...] = _opt((), "Registries (host:port) reached over plain HTTP.")
    auth_file: str = _opt("", "Docker config.json with registry credentials; empty: node credentials only.")
    ca_file: str = _opt("", "PEM bundle of extra CAs for registries; empty: system CAs.")
    timeout_seconds: float = _opt(30.0, "Timeout of each registry request.", _between(1, 600))
    platform: str = _opt("", "Platform picked from image indexes (os/arch[/variant]); empty: this node's.")


@dataclass(frozen=True)
class CredentialsConfig:
    """Registry credentials beyond the node's own."""

    service_account_pull_secrets: bool = _opt(
        False,
        "For a model of an InferenceService, also use its component's image pull secrets (its "
        "`imagePullSecrets`, else its ServiceAccount's), read on demand; needs "
        "`deploy/agent/optional/pull-secrets-role.yaml` bound in each such namespace.",
    )


@dataclass(frozen=True)
class KubernetesConfig:
    """Where models come from in a cluster, and how the agent reports."""

    namespaces: tuple[str, ...] = _opt((), "Namespaces whose InferenceServices are followed; empty: all.")
    node_selector: dict[str, str] = _opt({}, "Labels a node must have for the agent to warm anything on it.")
    default_priority: int = _opt(0, "Priority of a model whose InferenceService has no priority annotation.")
    priority_annotation: str = _opt(
        "modelcar-prefetcher.io/priority", "InferenceService annotation holding an integer priority."
    )
    scale_to_zero_boost: int = _opt(
        100,
        "Added to the priority of models of InferenceServices with "
        "minReplicas 0, whose cold starts hurt most.",
    )
    startup_taint: str = _opt("", "Taint key removed from this node once its models are warm; empty: off.")
    startup_taint_deadline_seconds: float = _opt(
        1800.0,
        "Remove the start-up taint after this long even if models are not all warm.",
        _between(0, 86400),
    )
    models_warm_condition: str = _opt(
        "modelcar-prefetcher.io/ModelsWarm",
        "Node condition type the agent keeps on its node: True once every desired model is warm or "
        "skipped for a stated reason (for a NodeReadinessRule to gate a taint on); empty: off.",
    )


@dataclass(frozen=True)
class FleetConfig:
    """Fleet-wide pull pacing: nodes take turns per model digest through Leases (operator guide, 7)."""

    pacing: bool = _opt(
        True,
        "Take turns with the other nodes pulling the same digest; `false` pulls as soon as planned. "
        "Never delays a model no other node pulls.",
    )
    seed_pulls: int = _opt(
        1,
        "Nodes that may pull a digest at once while no node holds it warm (from the origin).",
        _between(1, 1000),
    )
    max_concurrent_pulls: int = _opt(
        10,
        "Nodes that may pull a digest at once once a node holds it warm; size for the pull-through "
        "cache or P2P mirror that serves them.",
        _between(1, 100_000),
    )
    max_concurrent_pulls_per_registry: int = _opt(
        0,
        "Pulls from one registry host at once across the fleet, all models together; 0: no cap.",
        _between(0, 100_000),
    )
    lease_duration_seconds: float = _opt(
        60.0,
        "A turn not renewed for this long (holder dead or pull stalled) passes to another node.",
        _between(5, 86400),
    )
    max_wait_seconds: float = _opt(
        3600.0,
        "After waiting this long for a turn, pull anyway (with a PacingDeadlinePassed Event).",
        _between(0, 7 * 86400),
    )
    poll_seconds: float = _opt(10.0, "How often a node waiting for a turn looks again.", _between(1, 3600))


@dataclass(frozen=True)
class Config:
    """The agent's configuration."""

    cri_endpoint: str = _opt(
        "", "CRI socket (unix:///…); empty: the first of containerd's and CRI-O's usual sockets that exists."
    )
    cri_timeout_seconds: float = _opt(
        10.0, "Timeout of each CRI call other than PullImage.", _between(1, 600)
    )
    image_fs_path: str = _opt(
        "/var/lib/containerd",
        "A path on the filesystem holding the runtime's images; "
        "its usage is what the budget governs, measured as kubelet does.",
    )
    state_file: str = _opt(
        "/var/lib/modelcar-prefetcher/state.json",
        "Where the agent remembers what it pulled and its back-off state.",
    )
    resync_seconds: float = _opt(
        30.0, "Time between reconcile passes when nothing changes.", _between(1, 86400)
    )
    listen_address: str = _opt("0.0.0.0:8080", "Address of /metrics, /healthz and /readyz.", _host_port)
    log_format: str = _opt("text", "`text` or `json`.", _one_of("text", "json"))
    log_level: str = _opt(
        "info", "debug, info, warning or error.", _one_of("debug", "info", "warning", "error")
    )
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    pull: PullConfig = field(default_factory=PullConfig)
    eviction: EvictionConfig = field(default_factory=EvictionConfig)
    registries: RegistriesConfig = field(default_factory=RegistriesConfig)
    credentials: CredentialsConfig = field(default_factory=CredentialsConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)


# Read on every pass; any other key is read once at start-up, so changing it needs a restart.
LIVE_KEYS = ("resyncSeconds", "budget.", "pull.", "eviction.", "fleet.")


def load_config(text: str) -> Config:
    """Parse and validate a YAML configuration; raises ConfigError naming the bad key and value.

    An empty document is an error, not "all defaults": a truncated ConfigMap must not reset every
    setting. ``{}`` asks for the defaults.
    """
    data = _yaml(text, "config")
    if data is None:
        raise ConfigError("config is empty (write `{}` for all defaults)")
    config: Config = _build(Config, data, "")
    return config


def load_models(text: str) -> tuple[ModelRequest, ...]:
    """Parse a models file: ``models: [{uri, priority}]``. URIs are checked later, one by one.

    An empty document is an error (a truncated file must not evict every model); ``models: []``
    asks for none.
    """
    data = _yaml(text, "models file")
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
    before, after = dict(_values(started, "")), dict(_values(current, ""))
    return tuple(k for k in after if before[k] != after[k] and not k.startswith(LIVE_KEYS))


def _values(obj: Any, prefix: str) -> list[tuple[str, Any]]:
    pairs = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + yaml_key(f.name)
        pairs += _values(value, key + ".") if dataclasses.is_dataclass(value) else [(key, value)]
    return pairs


def _yaml(text: str, what: str) -> Any:
    """The YAML document; a syntax error is one ConfigError line with its position."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({err.context})" if err.context else ""
        raise ConfigError(f"{what} is not valid YAML: {where}{err.problem}{context}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} is not valid YAML: {' '.join(str(err).split())}") from err


def reference_rows() -> list[tuple[str, str, str]]:
    """Every key of the configuration with its default (as shown in docs) and its doc."""
    return _walk(Config, "")


def reference_table() -> str:
    """The configuration reference as a Markdown table (key, default, meaning)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{k}` | `{d}` | {doc} |" for k, d, doc in reference_rows()]
    return "\n".join(rows)


def yaml_key(name: str) -> str:
    """The YAML key of a field: its name in camelCase."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _walk(cls: Any, prefix: str) -> list[tuple[str, str, str]]:
    rows = []
    hints: dict[str, Any] = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + yaml_key(f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            rows += _walk(hints[f.name], key + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        rows.append((key, _show(default), f.metadata["doc"]))
    return rows


def _show(value: Any) -> str:
    if isinstance(value, bool | tuple | dict) or value == "":
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def _build(cls: Any, data: Any, path: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints: dict[str, Any] = typing.get_type_hints(cls)
    fields = {yaml_key(f.name): f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{path}{key}: unknown key")
    values = {}
    for key, f in fields.items():
        if key not in data:
            continue
        kind: Any = hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = _build(kind, data[key], f"{path}{key}.")
            continue
        value = _convert(kind, data[key], f"{path}{key}")
        problem = f.metadata["check"] and f.metadata["check"](value)
        if problem:
            raise ConfigError(f"{path}{key}: {problem}, got {data[key]!r}")
        values[f.name] = value
    return cls(**values)


def _convert(kind: Any, value: Any, key: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key}: expected {expected}, got {value!r}")

    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind in (int, float):
        wrong_int = kind is int and isinstance(value, float)
        if isinstance(value, bool) or not isinstance(value, int | float) or wrong_int:
            raise bad("an integer" if kind is int else "a number")
        return kind(value)
    if kind is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise bad("a mapping of strings")
        return dict(value)
    raise AssertionError(f"unsupported config type {kind} at {key}")  # a bug in this module, not input
