"""The alert rules and the dashboard's queries, checked and unit-tested by the real promtool.

``tests/monitoring/alerts_test.yaml`` holds promtool's unit tests: for each alert, series that
must raise it (with its labels and annotations) and nearby series that must not. The dashboard's
queries are checked as PromQL by making each one a recording rule for ``promtool check rules``.
Whether every metric they name is exported is ``test_chart_cluster``'s concern (a real scrape).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.helm import CHART, REPO, run

pytestmark = pytest.mark.integration

RULES = CHART / "files" / "prometheus-rules.yaml"
# Grafana's variables, given values that make each query plain PromQL.
VARIABLES = {"$__rate_interval": "5m", "$node": "node-1", "${datasource}": ""}


def test_the_alert_rules_are_valid() -> None:
    result = run("promtool", "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 13 rules found" in result.stdout, result.stdout


def test_each_alert_fires_on_what_should_raise_it_and_not_on_its_neighbours() -> None:
    result = run("promtool", "test", "rules", str(REPO / "tests" / "monitoring" / "alerts_test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = yaml.safe_load((REPO / "tests" / "monitoring" / "alerts_test.yaml").read_text())
    covered = {t["alertname"] for group in tested["tests"] for t in group.get("alert_rule_test", [])}
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert covered == alerts


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][1]["definition"].replace("label_values(", "").split(",")[0])
    for name, value in VARIABLES.items():
        exprs = [e.replace(name, value) for e in exprs]
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run("promtool", "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout
