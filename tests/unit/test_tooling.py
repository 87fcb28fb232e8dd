"""The pre-commit hooks run the same checks as ``make lint`` (what CI runs), and nothing else."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _lint_recipe() -> list[list[str]]:
    """The commands of the Makefile's ``lint`` target."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("lint:")))
    recipe: list[list[str]] = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(shlex.split(line))
    return recipe


def _hooks() -> dict[str, dict[str, object]]:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    return {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}


def test_the_hooks_are_ruff_and_mypy_from_the_project_venv() -> None:
    hooks = _hooks()
    assert set(hooks) == {"ruff", "mypy"}
    assert all(hook["language"] == "system" for hook in hooks.values())
    assert str(hooks["ruff"]["entry"]).startswith(".venv/bin/ruff check")
    assert hooks["mypy"]["entry"] == ".venv/bin/mypy"
    assert hooks["mypy"]["pass_filenames"] is False  # the file list is pyproject's, as in make lint


def test_ruff_checks_the_directories_make_lint_checks() -> None:
    (ruff,) = [command for command in _lint_recipe() if command[0] == ".venv/bin/ruff"]
    linted = {argument for argument in ruff[2:] if not argument.startswith("-")}
    pattern = str(_hooks()["ruff"]["files"])
    match = re.fullmatch(r"\^\((?P<dirs>[\w|]+)\)/", pattern)
    assert match, f"unexpected files pattern {pattern!r}"
    assert set(match["dirs"].split("|")) == linted
    assert {"prefetcher", "tests", "bench", "hack"} <= linted


def test_mypy_runs_as_make_lint_runs_it() -> None:
    assert [".venv/bin/mypy"] in _lint_recipe()
