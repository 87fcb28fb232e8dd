"""A small RFC 6902 JSONPatch applier for the webhook tests, and its own tests (RFC examples).

Strict on purpose: an operation on a path that does not exist raises, as the API server would
reject the patch, so a wrong index or a missing parent in a generated patch fails the test.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest


class PatchError(Exception):
    """The patch does not apply to the document."""


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"pointer {pointer!r} does not start with /")
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def _index(container: list[Any], token: str, *, adding: bool) -> int:
    if token == "-" and adding:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"bad array index {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not adding):
        raise PatchError(f"array index {index} out of range (length {len(container)})")
    return index


def _parent(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"missing member {token!r}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, adding=False)]
        else:
            raise PatchError(f"cannot descend into {type(node).__name__} at {token!r}")
    return node


def apply_patch(document: Any, patch: list[dict[str, Any]]) -> Any:
    """``document`` with ``patch`` applied (add, remove, replace, test); the input is not changed."""
    doc = copy.deepcopy(document)
    for op in patch:
        tokens = _tokens(op["path"])
        if not tokens:
            raise PatchError("operations on the whole document are not used here")
        parent, last = _parent(doc, tokens), tokens[-1]
        kind = op["op"]
        if kind == "add":
            if isinstance(parent, dict):
                parent[last] = copy.deepcopy(op["value"])
            elif isinstance(parent, list):
                parent.insert(_index(parent, last, adding=True), copy.deepcopy(op["value"]))
            else:
                raise PatchError(f"cannot add into {type(parent).__name__}")
        elif kind in ("remove", "replace", "test"):
            if isinstance(parent, dict):
                if last not in parent:
                    raise PatchError(f"missing member {last!r}")
                key: Any = last
            elif isinstance(parent, list):
                key = _index(parent, last, adding=False)
            else:
                raise PatchError(f"cannot {kind} in {type(parent).__name__}")
            if kind == "remove":
                del parent[key]
            elif kind == "replace":
                parent[key] = copy.deepcopy(op["value"])
            elif parent[key] != op["value"]:
                raise PatchError(f"test failed at {op['path']}")
        else:
            raise PatchError(f"unsupported op {kind!r}")
    return doc


@pytest.mark.parametrize(
    ("doc", "patch", "expected"),
    [
        ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"foo": "bar", "baz": "qux"}),
        (
            {"foo": ["bar", "baz"]},
            [{"op": "add", "path": "/foo/1", "value": "qux"}],
            {"foo": ["bar", "qux", "baz"]},
        ),
        ({"foo": [1]}, [{"op": "add", "path": "/foo/-", "value": 2}], {"foo": [1, 2]}),
        ({"foo": 1}, [{"op": "add", "path": "/foo", "value": 2}], {"foo": 2}),
        ({"a/b": {"m~n": 1}}, [{"op": "replace", "path": "/a~1b/m~0n", "value": 3}], {"a/b": {"m~n": 3}}),
        ({"foo": [1, 2]}, [{"op": "remove", "path": "/foo/0"}], {"foo": [2]}),
    ],
)
def test_applies_rfc6902_examples(doc: Any, patch: list[dict[str, Any]], expected: Any) -> None:
    assert apply_patch(doc, patch) == expected


@pytest.mark.parametrize(
    "patch",
    [
        [{"op": "add", "path": "/missing/child", "value": 1}],
        [{"op": "add", "path": "/list/5", "value": 1}],
        [{"op": "replace", "path": "/absent", "value": 1}],
        [{"op": "add", "path": "/list/01", "value": 1}],
        [{"op": "test", "path": "/list/0", "value": 9}],
    ],
)
def test_rejects_patches_that_do_not_apply(patch: list[dict[str, Any]]) -> None:
    with pytest.raises(PatchError):
        apply_patch({"list": [1]}, patch)
