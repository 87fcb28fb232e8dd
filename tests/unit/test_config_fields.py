"""The one loader of configuration documents: key rule, types, checks, nested sections, references.

A small document of every field type stands in for a future one (a new ``fleet:`` section, say);
the agent's and the webhook's own documents are checked for what both must keep: a one-line doc
per key, defaults that load back as themselves, and JSON Schema limits that agree with the loader.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pytest
import yaml

from prefetcher.config import Config, LogLevel, TagPolicy, load_config, restart_keys
from prefetcher.config_fields import (
    Between,
    Env,
    HostPort,
    Matches,
    build,
    default_of,
    flatten,
    keys,
    option,
    plain,
    rows,
    section,
    table,
    yaml_key,
)
from prefetcher.config_schema import json_schema
from prefetcher.core.address import parse_host_port
from prefetcher.errors import ConfigError
from prefetcher.webhook.config import WebhookConfig, load_webhook_config


class _Mode(StrEnum):
    FAST = "fast"
    SAFE = "safe-mode"


@dataclass(frozen=True)
class _Fleet:
    """A nested section."""

    seed_pulls: int = option(1, "Seed pulls.", Between(0, 10))
    mode: _Mode = option(_Mode.SAFE, "Mode.")


@dataclass(frozen=True)
class _Doc:
    """A document of every field type."""

    name: str = option("abc", "Name.", Matches("[a-z]+", "lower-case letters"))
    uid: int | None = option(None, "Uid.", Between(0, 10))
    ratio: float = option(1.0, "Ratio.", Between(0, 2))
    enabled: bool = option(False, "Enabled.")
    hosts: tuple[str, ...] = option((), "Hosts.", Matches("[a-z]+", "lower-case letters"))
    labels: dict[str, str] = option({}, "Labels.")
    env: Env = option((("A", "1"),), "Env.", Matches("[A-Z]+", "an upper-case name"))
    listen_address: str = option(":80", "Listen.", HostPort())
    fleet: _Fleet = section(_Fleet)


def load(text: str) -> _Doc:
    return build(_Doc, yaml.safe_load(text))


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("enabled", "enabled"),
        ("resync_seconds", "resyncSeconds"),
        ("uid_modelcar", "uidModelcar"),
        ("max_concurrent_pulls_per_registry", "maxConcurrentPullsPerRegistry"),
        ("k8s_api_url", "k8sApiUrl"),  # capitalize, not title: no capital after a digit
    ],
)
def test_one_camel_case_rule(name: str, key: str) -> None:
    assert yaml_key(name) == key


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("{}", "name", "abc"),
        ("name: xyz", "name", "xyz"),
        ("uid: null", "uid", None),
        ("uid: 7", "uid", 7),
        ("ratio: 2", "ratio", 2.0),
        ("enabled: true", "enabled", True),
        ("hosts: [a, b]", "hosts", ("a", "b")),
        ("labels: {gpu: 'true'}", "labels", {"gpu": "true"}),
        ("env: {B: '2', A: x}", "env", (("B", "2"), ("A", "x"))),
        ("env: {}", "env", ()),
        ("listenAddress: '[::1]:9000'", "listen_address", "[::1]:9000"),
        ("fleet: {seedPulls: 3}", "fleet.seed_pulls", 3),
        ("fleet: {mode: fast}", "fleet.mode", _Mode.FAST),
        ("fleet: {}", "fleet.mode", _Mode.SAFE),
    ],
)
def test_accepted_values(text: str, path: str, value: object) -> None:
    found: Any = load(text)
    for part in path.split("."):
        found = getattr(found, part)
    assert found == value and type(found) is type(value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nmae: x", "nmae: unknown key"),
        ("fleet: {seed: 1}", "fleet.seed: unknown key"),
        ("fleet: 3", "fleet: expected a mapping, got 3"),
        ("- 1", "config: expected a mapping, got [1]"),
        ("name: ABC", "name: must be lower-case letters, got 'ABC'"),
        ("name: 3", "name: expected a string, got 3"),
        ("uid: 11", "uid: must be between 0 and 10, got 11"),
        ("uid: true", "uid: expected an integer, got True"),
        ("ratio: '1'", "ratio: expected a number, got '1'"),
        ("enabled: 1", "enabled: expected true or false, got 1"),
        ("hosts: [a, B1]", "hosts: must be lower-case letters, got 'B1'"),
        ("hosts: a", "hosts: expected a list of strings, got 'a'"),
        ("labels: {a: 1}", "labels: expected a mapping of strings, got {'a': 1}"),
        ("env: {lower: x}", "env: must be an upper-case name, got 'lower'"),
        ("env: {A: 1}", "env: expected a mapping of variable names to strings (quote numbers: '1')"),
        ("env: [A]", "env: expected a mapping of variable names to strings, got ['A']"),
        ("listenAddress: '80'", "listenAddress: must be host:port"),
        ("fleet: {seedPulls: -1}", "fleet.seedPulls: must be between 0 and 10, got -1"),
        ("fleet: {mode: slow}", "fleet.mode: must be one of fast, safe-mode, got 'slow'"),
        ("fleet: {mode: 1}", "fleet.mode: expected a string, got 1"),
    ],
)
def test_rejected_values_name_the_key_and_the_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load(text)


def test_rows_table_and_flatten_walk_nested_sections() -> None:
    assert rows(_Doc)[-2:] == [("fleet.seedPulls", "1", "Seed pulls."), ("fleet.mode", "safe-mode", "Mode.")]
    assert rows(_Doc)[1] == ("uid", "null", "Uid.")
    assert rows(_Doc)[6] == ("env", '{"A": "1"}', "Env.")
    assert "| `fleet.seedPulls` | `1` | Seed pulls. |" in table(_Doc).splitlines()
    assert keys(_Doc)[-2:] == ("fleet.seedPulls", "fleet.mode")
    assert dict(flatten(load("fleet: {seedPulls: 4}")))["fleet.seedPulls"] == 4


def test_json_schema_states_the_same_types_and_limits() -> None:
    schema = json_schema(_Doc)
    props = schema["properties"]
    assert (
        schema["additionalProperties"] is False and schema["description"] == "A document of every field type."
    )
    assert props["uid"] == {
        "description": "Uid.",
        "type": ["integer", "null"],
        "default": None,
        "minimum": 0,
        "maximum": 10,
    }
    assert props["hosts"]["items"] == {"type": "string", "pattern": "^(?:[a-z]+)$"}
    assert props["env"]["propertyNames"] == {"pattern": "^(?:[A-Z]+)$"} and props["env"]["default"] == {
        "A": "1"
    }
    assert props["fleet"]["properties"]["mode"]["enum"] == ["fast", "safe-mode"]
    assert props["fleet"]["additionalProperties"] is False


DOCUMENTS = [Config, WebhookConfig]
LOADERS = {Config: load_config, WebhookConfig: load_webhook_config}


@pytest.mark.parametrize("cls", DOCUMENTS, ids=lambda c: c.__name__)
def test_every_key_has_a_one_line_doc(cls: Any) -> None:
    for key, _default, doc in rows(cls):
        assert doc and "\n" not in doc and doc.endswith("."), key


@pytest.mark.parametrize("cls", DOCUMENTS, ids=lambda c: c.__name__)
def test_the_defaults_written_out_load_back_as_themselves(cls: Any) -> None:
    nested: dict[str, Any] = {}
    for key, value in flatten(cls()):
        *parents, leaf = key.split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = plain(value)
    assert LOADERS[cls](yaml.safe_dump(nested)) == cls()


def _patterns(cls: Any) -> list[tuple[str, Matches]]:
    found = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(default_of(f)):
            found += _patterns(type(default_of(f)))
        elif isinstance(f.metadata["check"], Matches):
            found.append((f.name, f.metadata["check"]))
    return found


SAMPLES = ["", "a", "a-b", "-a", "A", "a_b", "10m", "1.5Gi", "+1", "1e3", ".5", "x/y", "a.b/c-d", "a" * 64]


@pytest.mark.parametrize(
    ("name", "check"), [p for cls in DOCUMENTS for p in _patterns(cls)], ids=lambda v: getattr(v, "what", v)
)
def test_schema_patterns_accept_what_the_loader_accepts(name: str, check: Matches) -> None:
    pattern = check.schema()["pattern"]
    for sample in SAMPLES:
        assert (re.search(pattern, sample) is not None) == (check.problem(sample) is None), (name, sample)


def test_enum_settings_load_as_members_and_compare_as_their_strings() -> None:
    cfg = load_config("pull: {tagPolicy: allow}\nlogLevel: debug")
    assert cfg.pull.tag_policy is TagPolicy.ALLOW and cfg.pull.tag_policy == "allow"
    assert cfg.log_level is LogLevel.DEBUG and f"{cfg.log_level}" == "debug"


def test_restart_keys_are_the_changed_keys_read_only_at_start_up() -> None:
    changed = load_config("logLevel: debug\npull: {concurrency: 3}\nkubernetes: {startupTaint: t}")
    assert restart_keys(Config(), changed) == ("logLevel", "kubernetes.startupTaint")


@pytest.mark.parametrize(
    ("text", "address"),
    [(":8080", ("0.0.0.0", 8080)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:65535", ("::1", 65535))],
)
def test_host_port(text: str, address: tuple[str, int]) -> None:
    assert parse_host_port(text) == address


@pytest.mark.parametrize("text", ["8080", ":65536", "host:http", ":", "h:-1", ":8080\n"])
def test_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="must be host:port"):
        parse_host_port(text)
