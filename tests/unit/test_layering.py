"""The layering rule: only adapters talk to the outside; the core does no I/O at all.

Checked on the import statements of every module, so a new ``import grpc`` in the planner or the
agent fails here instead of in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "prefetcher"
OUTSIDE = (
    "grpc",
    "kubernetes",
    "urllib3",
    "requests",
    "http.client",
    "socket",
    "hypercorn",
    "prefetcher.adapters.cri_api",
)
CORE_FORBIDDEN = (
    *OUTSIDE,
    "logging",
    "time",
    "random",
    "os",
    "subprocess",
    "threading",
    "prometheus_client",
    "prefetcher.adapters",
    "prefetcher.agent",
    "prefetcher.webhook.server",
)


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offending(path: Path, banned: tuple[str, ...]) -> list[str]:
    return sorted(n for n in imports(path) if any(n == b or n.startswith(b + ".") for b in banned))


# The servers are the webhook's and the agent's inbound adapters: they own their sockets.
SERVERS = {Path("webhook/server.py"), Path("webhook/app.py"), Path("agent/health.py")}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "cri_api" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_adapters_import_io_libraries(path: Path) -> None:
    rel = path.relative_to(PACKAGE)
    if rel.parts[0] == "adapters":
        if rel.name != "cri.py":  # the generated CRI stubs belong to the CRI adapter alone
            assert [n for n in imports(path) if "cri_api" in n] == []
        return
    if rel in SERVERS:
        return
    banned = CORE_FORBIDDEN if rel.parts[0] == "core" else OUTSIDE
    assert offending(path, banned) == [], f"{rel} imports {offending(path, banned)}"


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import grpc\nfrom kubernetes import client\n")
    assert offending(bad, OUTSIDE) == ["grpc", "kubernetes"]
