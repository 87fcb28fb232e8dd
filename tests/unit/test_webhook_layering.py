"""The webhook's pure modules do no I/O, logging, clocks or randomness; only server, app and tls do."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WEBHOOK = Path(__file__).resolve().parents[2] / "prefetcher" / "webhook"
IO_MODULES = {"server.py", "app.py", "tls.py", "metrics.py"}  # metrics: prometheus objects, no I/O of its own
FORBIDDEN = (
    "logging",
    "time",
    "random",
    "os",
    "io",
    "pathlib",
    "socket",
    "socketserver",
    "ssl",
    "http",
    "threading",
    "subprocess",
    "prometheus_client",
    "tornado",
    "asyncio",
    "prefetcher.webhook.server",
    "prefetcher.webhook.app",
    "prefetcher.webhook.tls",
    "prefetcher.webhook.metrics",
    "prefetcher.adapters",
    "prefetcher.agent",
)
PURE = sorted(p for p in WEBHOOK.glob("*.py") if p.name not in IO_MODULES)


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", PURE, ids=lambda p: p.name)
def test_pure_modules_import_no_io(path: Path) -> None:
    bad = sorted(n for n in imported(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))
    assert bad == [], f"{path.name} imports {bad}"
    assert "open(" not in path.read_text(), f"{path.name} opens files"


def test_the_pure_set_is_the_expected_one() -> None:
    names = {p.name for p in PURE}
    assert {"patch.py", "handler.py", "config.py", "podview.py", "security.py", "containers.py"} <= names
