"""The README's configuration references are generated from the configs' own field docs."""

import re
from pathlib import Path

import pytest

from prefetcher.config import reference_table
from prefetcher.config_fields import table
from prefetcher.errors import PullFailure
from prefetcher.webhook.config import WebhookConfig

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_config_key_with_its_default_and_meaning() -> None:
    assert reference_table() in (ROOT / "README.md").read_text()


def test_readme_lists_every_webhook_config_key_with_its_default_and_meaning() -> None:
    assert table(WebhookConfig) in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("doc", ["README.md", "docs/operator-guide.md"])
def test_the_pulls_metric_row_lists_every_failure_reason(doc: str) -> None:
    text = (ROOT / doc).read_text()
    (row,) = re.findall(r"^\| `prefetcher_pulls_total\{outcome,reason\}` \|.*$", text, re.M)
    assert set(re.findall(r"`([a-z_]+)`", row.split("|")[2])) >= {reason.value for reason in PullFailure}


def test_ci_runs_the_test_command_the_readme_names() -> None:
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
