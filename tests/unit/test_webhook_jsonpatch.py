"""The test JSONPatch applier of ``tests.support.jsonpatch`` against RFC 6902's examples."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.jsonpatch import PatchError, apply_patch


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
