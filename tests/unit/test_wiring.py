"""The wiring's own decisions: readiness from the loop's status, where reports go, which sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefetcher.agent.runtime_support import LogEvents
from prefetcher.agent.status import PassReport, StatusBoard
from prefetcher.config import load_config
from prefetcher.errors import ConfigError
from prefetcher.testing.fakes import FakeEvents
from prefetcher.wiring.agent import AgentOptions, model_feed, readiness
from prefetcher.wiring.feed import NodeReports


def options(tmp_path: Path, *, models: Path | None = None, node_name: str = "") -> AgentOptions:
    return AgentOptions(
        config_path=tmp_path / "agent.yaml",
        models_path=models,
        follow_inferenceservices=False,
        node_name=node_name,
        kubeconfig=None,
    )


def test_readiness_says_starting_until_the_first_pass_then_follows_the_runtime() -> None:
    board = StatusBoard()
    assert readiness(board.read()) == (False, "starting")
    board.failed("runtime unavailable", pulling=0, managed_bytes=0)
    assert readiness(board.read()) == (False, "passes=0 runtime_ok=False")
    board.passed(PassReport(), pulling=0, managed_bytes=0)
    assert readiness(board.read()) == (True, "passes=1 runtime_ok=True")
    board.failed("runtime unavailable again", pulling=0, managed_bytes=0)
    assert readiness(board.read()) == (False, "passes=1 runtime_ok=False")


def test_reports_about_the_agent_reach_the_node_once_its_sink_is_attached() -> None:
    reports, events = NodeReports(), FakeEvents()
    reports.report("ConfigRejected", "before the cluster is wired: the log line is the report")
    reports.attach(events)
    reports.report("ConfigRejected", "agent.yaml: bad value")
    assert events.events == [(("node",), True, "ConfigRejected", "agent.yaml: bad value")]


def test_a_models_file_alone_needs_no_cluster(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models: [{uri: 'oci://registry.test/models/a:v1', priority: 3}]")
    feed = model_feed(options(tmp_path, models=models), load_config("{}"), on_reload=lambda *_: None)
    assert [(r.uri, r.priority) for r in feed.models.requests()] == [("oci://registry.test/models/a:v1", 3)]
    assert isinstance(feed.events, LogEvents)
    assert (feed.after_pass, feed.pull_secrets, feed.node_events) == (None, None, None)


def test_following_inferenceservices_needs_the_node_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--node-name \(or \$NODE_NAME\) is required"):
        model_feed(options(tmp_path), load_config("{}"), on_reload=lambda *_: None)
