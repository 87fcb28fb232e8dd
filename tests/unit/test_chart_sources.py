"""The chart's generated files, its config values and its alerts agree with their sources.

The schema's ``config`` part, the chart README and the kustomize copies of the rules and dashboard
are generated (``hack/chart_docs.py``); the shipped config values equal ``deploy/agent/agent.yaml``;
each alert's runbook link lands on a section of the operator guide.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import yaml

from prefetcher.config import Config, load_config
from prefetcher.config_schema import json_schema
from prefetcher.webhook.config import WebhookConfig, load_webhook_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "modelcar-prefetcher"
GUIDE = ROOT / "docs" / "operator-guide.md"


def chart_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_docs", ROOT / "hack" / "chart_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_file_is_up_to_date() -> None:
    stale = [str(p.relative_to(ROOT)) for p, text in chart_docs().outputs().items() if p.read_text() != text]
    assert stale == [], "run .venv/bin/python hack/chart_docs.py"


def test_the_schema_of_config_is_the_agents_own() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["config"] == json_schema(Config)


def test_the_schema_of_webhook_config_is_the_webhooks_own_and_its_values_load() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["webhook"]["properties"]["config"] == json_schema(WebhookConfig)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert load_webhook_config(yaml.safe_dump(values["webhook"]["config"])) == WebhookConfig()


def test_the_charts_config_values_are_the_kustomize_agent_yaml_and_load() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    shipped = (ROOT / "deploy" / "agent" / "agent.yaml").read_text()
    assert values["config"] == yaml.safe_load(shipped)
    assert load_config(yaml.safe_dump(values["config"])) == load_config(shipped)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_has_a_runbook_section_in_the_operator_guide() -> None:
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert alerts
    targets = {a["alert"]: a["annotations"]["runbook_url"] for a in alerts}
    assert targets == {name: f"docs/operator-guide.md#{name.lower()}" for name in targets}
    found = anchors(GUIDE.read_text())
    assert {name.lower() for name in targets} <= found


def test_every_link_inside_the_operator_guide_lands_on_a_heading() -> None:
    text = GUIDE.read_text()
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links - anchors(text) == set()
