"""Rendering the kustomize manifests under ``deploy/`` for tests, and picking objects out of them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml


def render(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize path`` as a list of objects; fails the test when kubectl is missing."""
    kubectl = shutil.which("kubectl") or "/usr/bin/kubectl"
    if not Path(kubectl).exists():
        pytest.fail("kubectl is needed to render the kustomize manifests and was not found")
    result = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single object of ``kind`` (and ``name`` when given); fails unless there is exactly one."""
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.0.b": leaf}`` for every leaf; list items that have a ``name`` are keyed by it.

    A strategic merge patch reorders named items (containers, volumes), which changes nothing.
    """
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = [(i["name"] if isinstance(i, dict) and "name" in i else n, i) for n, i in enumerate(value)]
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat |= flatten(item, f"{prefix}.{key}" if prefix else str(key))
    return flat
