"""The agent configuration as a JSON Schema, derived from the same fields and docs as the reference.

The Helm chart's ``values.schema.json`` holds this schema under ``config`` (a test keeps them
equal), so ``helm install`` and ``helm template`` reject a bad value with its key before the agent
ever reads it, and the chart's README describes each key in the words of ``reference_table``.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from prefetcher.config import Between, Config, HostPort, OneOf, yaml_key

_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 7) of a configuration document."""
    return _object(Config)


def _object(cls: Any) -> dict[str, Any]:
    hints: dict[str, Any] = typing.get_type_hints(cls)
    properties = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        properties[yaml_key(f.name)] = _object(kind) if dataclasses.is_dataclass(kind) else _leaf(f, kind)
    doc = (cls.__doc__ or "").strip()
    return {"type": "object", "description": doc, "additionalProperties": False, "properties": properties}


def _leaf(f: dataclasses.Field[Any], kind: Any) -> dict[str, Any]:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
    schema: dict[str, Any] = {"description": f.metadata["doc"]}
    origin = typing.get_origin(kind)
    if kind in _SCALARS:
        schema["type"] = _SCALARS[kind]
    elif origin is tuple:
        schema |= {"type": "array", "items": {"type": "string"}}
        default = list(default)
    elif origin is dict:
        schema |= {"type": "object", "additionalProperties": {"type": "string"}}
    else:  # a new field type needs a case here, as it does in config._convert
        raise AssertionError(f"unsupported config type {kind} for {f.name}")
    schema["default"] = default
    return schema | _limits(f.metadata["check"])


def _limits(check: object) -> dict[str, Any]:
    if isinstance(check, Between):
        return {"minimum": check.low, "maximum": check.high}
    if isinstance(check, OneOf):
        return {"enum": list(check.choices)}
    if isinstance(check, HostPort):
        return {"pattern": check.pattern}
    if check is not None:
        raise AssertionError(f"check {check!r} has no JSON Schema form")
    return {}
