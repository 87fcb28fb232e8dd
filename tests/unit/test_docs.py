"""The README's configuration references are generated from the configs' own field docs."""

from pathlib import Path

from prefetcher.config import reference_table
from prefetcher.config_fields import table
from prefetcher.webhook.config import WebhookConfig

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_config_key_with_its_default_and_meaning() -> None:
    assert reference_table() in (ROOT / "README.md").read_text()


def test_readme_lists_every_webhook_config_key_with_its_default_and_meaning() -> None:
    assert table(WebhookConfig) in (ROOT / "README.md").read_text()


def test_ci_runs_the_test_command_the_readme_names() -> None:
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
