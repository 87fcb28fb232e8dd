"""The layering rules: only adapters talk to the outside, the core does no I/O, imports go downwards.

Two checks. Here, on the import statements of every module, so a new ``import grpc`` in the planner
or the agent fails here instead of in review. And by direction, with import-linter's contracts in
pyproject.toml (``[tool.importlinter]``, also run by ``make lint``), top to bottom::

    __main__ -> cli -> wiring -> agent | webhook | adapters | testing -> config_schema
             -> config | metrics -> ports -> core -> errors

A layer imports only layers below it; ``|`` joins independent siblings (the loop, the webhook, the
adapters and their fakes never import each other). ``config`` and ``metrics`` sit below the parts
because every part reads them; ``ports`` below them because adapters and fakes implement it;
``errors`` at the bottom because every layer raises them. A second contract keeps the fakes of
``prefetcher.testing`` out of what the commands run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "prefetcher"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
OUTSIDE = (
    "grpc",
    "kubernetes",
    "urllib3",
    "requests",
    "http.client",
    "socket",
    "tornado",
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


def lint_imports(config: Path, *, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(config)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_imports_follow_the_layers() -> None:
    run = lint_imports(ROOT / "pyproject.toml", cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


ALLOWED = [
    ("cli", "wiring"),
    ("wiring", "adapters"),
    ("agent", "ports"),
    ("adapters", "config"),
    ("core", "errors"),
]
WRONG_WAY = [
    ("core", "agent"),  # the core is pure
    ("agent", "adapters"),  # the loop sees ports, never adapters
    ("webhook", "agent"),  # siblings
    ("adapters", "wiring"),  # only the wiring builds graphs
    ("ports", "config"),
    ("wiring", "testing"),  # the fakes are for tests
]


def stand_in(root: Path, imports: list[tuple[str, str]]) -> Path:
    """A package ``layered`` with a module per layer of the real contracts, importing as ``imports`` say."""
    text = (ROOT / "pyproject.toml").read_text().split("[tool.importlinter]", 1)[1]
    config = root / "contracts.toml"
    config.write_text("[tool.importlinter]" + text.replace("prefetcher", "layered"))
    package = root / "layered"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for contract in tomllib.loads(config.read_text())["tool"]["importlinter"]["contracts"]:
        for layer in contract.get("layers", []):
            for name in layer.replace("|", " ").split():
                (package / (name.removeprefix("layered.") + ".py")).write_text("")
    for importer, imported in imports:
        with (package / f"{importer}.py").open("a") as module:
            module.write(f"import layered.{imported}\n")
    return config


def test_the_contracts_allow_imports_downwards(tmp_path: Path) -> None:
    run = lint_imports(stand_in(tmp_path, ALLOWED), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_contracts_see_every_wrong_way_import(tmp_path: Path) -> None:
    run = lint_imports(stand_in(tmp_path, WRONG_WAY), cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    missed = [f"{a} -> {b}" for a, b in WRONG_WAY if f"layered.{a} -> layered.{b}" not in run.stdout]
    assert missed == [], run.stdout
