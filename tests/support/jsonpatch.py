"""Test support: a small RFC 6902 JSONPatch applier, to apply what the webhook answers.

Strict on purpose: an operation on a path that does not exist raises, as the API server would
reject the patch, so a wrong index or a missing parent in a generated patch fails the test.
"""

from __future__ import annotations

import copy
from typing import Any


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
