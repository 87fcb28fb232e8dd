"""A configuration document as a JSON Schema, derived from the same fields and docs as its reference.

The Helm chart's ``values.schema.json`` holds the agent's schema under ``config`` and the webhook's
under ``webhook.config`` (a test keeps them equal), so ``helm install`` and ``helm template`` reject
a bad value with its key before either program reads it.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

from prefetcher.config_fields import Env, default_of, plain, yaml_key

_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def json_schema(cls: Any) -> dict[str, Any]:
    """The JSON Schema (draft 7) of a document class of ``prefetcher.config_fields``."""
    hints: dict[str, Any] = typing.get_type_hints(cls)
    properties = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        properties[yaml_key(f.name)] = json_schema(kind) if dataclasses.is_dataclass(kind) else _leaf(f, kind)
    doc = (cls.__doc__ or "").strip()
    return {"type": "object", "description": doc, "additionalProperties": False, "properties": properties}


def _leaf(f: dataclasses.Field[Any], kind: Any) -> dict[str, Any]:
    check = f.metadata["check"]
    limits = check.schema() if check else {}
    schema: dict[str, Any] = {"description": f.metadata["doc"]}
    if kind == Env:
        names = {"propertyNames": limits} if limits else {}
        return schema | {"type": "object", "additionalProperties": {"type": "string"}, **names} | _default(f)
    if typing.get_origin(kind) is tuple:
        return schema | {"type": "array", "items": {"type": "string", **limits}} | _default(f)
    return schema | _scalar(kind) | _default(f) | limits


def _default(f: dataclasses.Field[Any]) -> dict[str, Any]:
    return {"default": plain(default_of(f))}


def _scalar(kind: Any) -> dict[str, Any]:
    if isinstance(kind, types.UnionType):  # X | None
        (inner,) = (arg for arg in typing.get_args(kind) if arg is not type(None))
        schema = _scalar(inner)
        return schema | {"type": [schema["type"], "null"]}
    if kind in _SCALARS:
        return {"type": _SCALARS[kind]}
    if isinstance(kind, type) and issubclass(kind, enum.StrEnum):
        return {"type": "string", "enum": [member.value for member in kind]}
    if typing.get_origin(kind) is dict:
        return {"type": "object", "additionalProperties": {"type": "string"}}
    raise AssertionError(f"unsupported config type {kind}")  # a new type needs a case, as in config_fields
