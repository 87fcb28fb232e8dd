"""Test support: the real helm and promtool that ``hack/chart-tools.sh`` builds, and the chart.

``tool(name)`` is the binary's path, failing (never skipping) when it has not been built.
``template(values)`` renders the chart as ``helm template`` does, with the release name and
namespace an operator following the README uses, so that with no values it renders what the
kustomize tree under ``deploy/`` does.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "chart-tools.sh"
CHART = REPO / "deploy" / "helm" / "modelcar-prefetcher"
RELEASE = "modelcar-prefetcher"
NAMESPACE = "modelcar-prefetcher"
TIMEOUT_SECONDS = 120


def tool(name: str) -> Path:
    """The path of ``helm`` or ``promtool``; fails the test when the build is missing."""
    printed = subprocess.run(
        ["bash", str(SCRIPT), "--print-dir"], capture_output=True, text=True, check=True, timeout=30
    )
    path = Path(printed.stdout.strip()) / name
    if not path.exists():
        pytest.fail(f"{name} is missing from {path.parent}; build it with: bash {SCRIPT}", pytrace=False)
    return path


def run(name: str, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``helm`` or ``promtool`` with ``args``; the result, whatever its exit code."""
    return subprocess.run(
        [str(tool(name)), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
        env=dict(env) if env is not None else None,
        cwd=REPO,
    )


def values_file(directory: Path, values: Mapping[str, Any], name: str = "values.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(dict(values)))
    return path


def template_result(
    values: Mapping[str, Any] | None = None, *, extra: Sequence[str] = (), directory: Path
) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart with ``values`` (a values file), as a completed process."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
    if values:
        args += ["--values", str(values_file(directory, values))]
    return run("helm", *args)


def template(
    values: Mapping[str, Any] | None = None, *, extra: Sequence[str] = (), directory: Path
) -> list[dict[str, Any]]:
    """The objects ``helm template`` renders; fails the test with helm's words when it fails."""
    result = template_result(values, extra=extra, directory=directory)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
