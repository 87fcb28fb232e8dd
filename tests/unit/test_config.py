"""Config and models-file parsing, and hot reload that keeps the last good version."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from prefetcher.adapters.files import WatchedFile
from prefetcher.adapters.state import StateFile
from prefetcher.config import Config, load_config, load_models
from prefetcher.core.model import ManagedImage, ModelRequest
from prefetcher.core.state import AgentState, BackoffEntry
from prefetcher.errors import ConfigError
from tests.support.projected import ProjectedFile


def test_an_empty_mapping_gives_the_defaults() -> None:
    cfg = load_config("{}")
    assert cfg == Config()
    assert cfg.budget.max_usage_percent < 85  # below kubelet's default image GC high threshold


@pytest.mark.parametrize("text", ["", "\n", "# all commented out\n", "---\n"])
def test_an_empty_document_is_rejected_not_read_as_all_defaults(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^config is empty \(write `\{\}` for all defaults\)$"):
        load_config(text)
    with pytest.raises(ConfigError, match=r"^models file is empty \(write `models: \[\]` for no models\)$"):
        load_models(text)


def test_keys_are_camel_case_and_nested() -> None:
    cfg = load_config("pull: {concurrency: 4, tagPolicy: reject}\nregistries: {insecure: ['h:5000']}")
    assert cfg.pull.concurrency == 4 and cfg.pull.tag_policy == "reject"
    assert cfg.registries.insecure == ("h:5000",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pull: {concurrency: 0}", "pull.concurrency: must be between 1 and 64, got 0"),
        ("pull: {concurrency: 1.5}", "pull.concurrency: expected an integer, got 1.5"),
        ("budget: {maxUsagePercent: 120}", "budget.maxUsagePercent: must be between 1 and 100, got 120"),
        ("budget: {maxUsagePercent: yes}", "budget.maxUsagePercent: expected a number, got True"),
        ("pull: {tagPolicy: maybe}", "pull.tagPolicy: must be one of resolve, allow, reject, got 'maybe'"),
        ("eviction: {enabled: 'no'}", "eviction.enabled: expected true or false, got 'no'"),
        ("budgte: {}", "budgte: unknown key"),
        ("pull: {stall: 3}", "pull.stall: unknown key"),
        ("pull: 3", "pull: expected a mapping, got 3"),
        ("- 1", "config: expected a mapping"),
        ("a: [", "config is not valid YAML: line 1, column 5: expected the node content"),
        ("kubernetes: {nodeSelector: {gpu: 1}}", "kubernetes.nodeSelector: expected a mapping of strings"),
        ("listenAddress: 'localhost:metrics'", "listenAddress: must be host:port"),
        ("listenAddress: '8080'", "listenAddress: must be host:port"),
        ("listenAddress: ':70000'", "listenAddress: must be host:port"),
    ],
)
def test_invalid_config_names_the_key_and_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_config(text)


def test_models_file() -> None:
    assert load_models("models:\n- uri: oci://h/m@sha256:x\n  priority: 3\n- uri: busybox\n") == (
        ModelRequest("oci://h/m@sha256:x", 3, "models[0]"),
        ModelRequest("busybox", 0, "models[1]"),
    )
    assert load_models("models: []") == ()
    for bad, message in [
        ("model: [{uri: x}]", "^model: unknown key"),
        ("models: []\nextra: 1", "^extra: unknown key"),
        ("models: [{priority: 1}]", r"models\[0\].uri"),
        ("models: [{uri: x, prio: 1}]", "prio"),
        ("models: [{uri: x, priority: high}]", "priority"),
        ("models: 3", "list"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_models(bad)


def test_watched_file_reloads_on_change_and_keeps_the_last_good_version(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("pull: {concurrency: 3}")
    outcomes: list[str] = []
    watched = WatchedFile(path, load_config, on_reload=lambda outcome, _msg: outcomes.append(outcome))
    assert watched.current().pull.concurrency == 3
    path.write_text("pull: {concurrency: 0}")
    assert watched.current().pull.concurrency == 3
    path.write_text("pull: {concurrency: 5}")
    assert watched.current().pull.concurrency == 5
    path.unlink()
    assert watched.current().pull.concurrency == 5
    assert outcomes == ["invalid", "success", "error"]


def test_watched_file_follows_a_configmap_volume_update(tmp_path: Path) -> None:
    projected = ProjectedFile(tmp_path, "agent.yaml")
    projected.write("pull: {concurrency: 3}")
    outcomes: list[str] = []
    watched = WatchedFile(projected.path, load_config, on_reload=lambda o, _msg: outcomes.append(o))
    projected.write("pull: {concurrency: 0}")
    assert watched.current().pull.concurrency == 3
    projected.write("pull: {concurrency: 4}")
    assert watched.current().pull.concurrency == 4
    assert outcomes == ["invalid", "success"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("..2")) == [
        os.readlink(tmp_path / "..data")
    ]


def test_a_watched_file_must_be_valid_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("pull: {concurrency: 0}")
    with pytest.raises(ConfigError, match=r"pull\.concurrency"):
        WatchedFile(path, load_config, on_reload=lambda *_: None)


def test_state_file_round_trips_and_sets_a_corrupt_one_aside(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "state" / "state.json")
    assert state_file.load() == AgentState()
    managed = {"r": ManagedImage("r", "sha256:1", 1.0, 2.0, 3, 2)}
    state = AgentState(managed, {"q": BackoffEntry(2, 9.0, "boom")})
    state_file.save(state)
    assert state_file.load() == state
    (tmp_path / "state" / "state.json").write_text("{not json")
    assert state_file.load() == AgentState()
    assert (tmp_path / "state" / "state.corrupt").exists()


def test_a_yaml_error_is_one_line_with_its_position() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("budget:\n  maxUsagePercent: [50\npull: {}\n")
    assert "\n" not in str(caught.value) and "line 3, column" in str(caught.value)


@pytest.mark.parametrize("data", [b"budget: {maxUsagePercent: 50}\n\xff\xfe", b"\xc3("])
def test_a_file_that_is_not_utf8_is_a_config_error_naming_the_byte(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: not valid UTF-8 \\(byte 0x"):
        WatchedFile(path, load_config, on_reload=lambda *_: None)


@pytest.mark.parametrize(
    "edit", [b"\xff\xfe", b"", b"# emptied\n", b"budget: [", b"pull: {concurrency: 0}"]
)
def test_an_undecodable_empty_or_invalid_edit_keeps_the_last_good_version_and_is_reported_once(
    tmp_path: Path, edit: bytes
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("budget: {maxUsagePercent: 50}\nresyncSeconds: 2\n")
    reports: list[tuple[str, str]] = []
    watched = WatchedFile(path, load_config, on_reload=lambda o, m: reports.append((o, m)))
    path.write_bytes(edit)
    for _ in range(3):
        cfg = watched.current()
        assert cfg.budget.max_usage_percent == 50 and cfg.resync_seconds == 2
    ((outcome, message),) = reports
    assert outcome == "invalid" and message.startswith(str(path))
    assert message.endswith("; keeping the last good version")


def test_an_unreadable_config_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "agent.yaml"
    with pytest.raises(ConfigError, match=f"^cannot read {re.escape(str(missing))}: No such file"):
        WatchedFile(missing, load_config, on_reload=lambda *_: None)
