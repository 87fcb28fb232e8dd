"""Configuration documents as frozen dataclasses: one loader for the agent's and the webhook's.

A document declares each setting as a dataclass field made by ``option(default, doc, check)`` and
each nested section as a field made by ``section(Class)``. From those declarations alone this
module loads a YAML mapping (``build``), raising ``ConfigError`` that names the dotted key and the
value; lists the keys with their defaults and docs (``rows``) for the READMEs; and gives
``prefetcher.config_schema`` what it needs for the chart's JSON Schema. A YAML key is the camelCase
of its field name (``yaml_key``), and an unknown key is an error, so a typo is reported instead of
silently ignored.

Field types: ``bool``, ``int``, ``float``, ``str``, a ``StrEnum`` (its values are the choices),
``X | None``, ``tuple[str, ...]`` (a YAML list), ``dict[str, str]`` and ``Env`` (YAML mappings;
``Env`` keeps the order as pairs). A check on a list applies to each item, on an ``Env`` to each name.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import yaml

from prefetcher.core.address import HOST_PORT, parse_host_port
from prefetcher.errors import ConfigError

T = TypeVar("T")
Env = tuple[tuple[str, str], ...]
"""Environment variables as ``(name, value)`` pairs, written in YAML as a mapping."""


class Check(Protocol):
    """A limit on a value beyond its type, stated for the loader and for JSON Schema alike."""

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (``"must be …"``), or None."""

    def schema(self) -> dict[str, Any]:
        """The same limit as JSON Schema keywords."""


@dataclass(frozen=True)
class Between:
    """A number within ``low`` and ``high`` inclusive."""

    low: float
    high: float

    def problem(self, value: Any) -> str | None:
        ok = self.low <= value <= self.high
        return None if ok else f"must be between {self.low:g} and {self.high:g}"

    def schema(self) -> dict[str, Any]:
        return {"minimum": self.low, "maximum": self.high}


@dataclass(frozen=True)
class HostPort:
    """``host:port`` with a port 0-65535 (``:8080`` listens on every interface)."""

    def problem(self, value: Any) -> str | None:
        try:
            parse_host_port(value)
        except ValueError as err:
            return str(err)
        return None

    def schema(self) -> dict[str, Any]:
        return {"pattern": HOST_PORT}


@dataclass(frozen=True)
class Matches:
    """A string matching ``pattern`` in full (a pattern both ``re`` and JSON Schema read alike)."""

    pattern: str
    what: str

    def problem(self, value: Any) -> str | None:
        return None if re.fullmatch(self.pattern, value) else f"must be {self.what}"

    def schema(self) -> dict[str, Any]:
        return {"pattern": f"^(?:{self.pattern})$"}


@dataclass(frozen=True)
class Satisfies:
    """A value ``test`` accepts; ``test`` raises ``ValueError`` saying why not. ``hint``: JSON Schema."""

    test: Callable[[Any], object]
    hint: Mapping[str, Any] = field(default_factory=dict)

    def problem(self, value: Any) -> str | None:
        try:
            self.test(value)
        except ValueError as err:
            return str(err)
        return None

    def schema(self) -> dict[str, Any]:
        return dict(self.hint)


def option(default: Any, doc: str, check: Check | None = None) -> Any:
    """A setting: its default, its one-line doc (the reference's words) and an optional check."""
    factory = (
        {"default_factory": lambda: dict(default)} if isinstance(default, dict) else {"default": default}
    )
    return field(**factory, metadata={"doc": doc, "check": check})


def section(cls: Callable[[], T]) -> T:
    """A nested section: a YAML mapping under the field's key, every setting of it defaulted."""
    return field(default_factory=cls)


def yaml_key(name: str) -> str:
    """The YAML key of a field name: ``uid_modelcar`` -> ``uidModelcar``."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def keys(cls: Any) -> tuple[str, ...]:
    """Every dotted key a document class accepts, nested sections' included."""
    return tuple(key for key, _default, _doc in rows(cls))


def parse_yaml(text: str, what: str) -> Any:
    """The YAML document (None when empty); a syntax error is one ConfigError line with its position."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({err.context})" if err.context else ""
        raise ConfigError(f"{what} is not valid YAML: {where}{err.problem}{context}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} is not valid YAML: {' '.join(str(err).split())}") from err


def build(cls: type[T], data: Any, *, what: str = "config", path: str = "") -> T:
    """A ``cls`` from the YAML mapping ``data``; ``ConfigError`` names the dotted key and the value."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path.rstrip('.') or what}: expected a mapping, got {data!r}")
    hints: dict[str, Any] = typing.get_type_hints(cls)
    fields = {yaml_key(f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise ConfigError(f"{path}{key}: unknown key")
    values: dict[str, Any] = {}
    for key, f in fields.items():
        if key not in data:
            continue
        kind: Any = hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = build(typing.cast(type, kind), data[key], path=f"{path}{key}.")
            continue
        value = _convert(kind, data[key], f"{path}{key}")
        _check(f.metadata["check"], kind, value, f"{path}{key}")
        values[f.name] = value
    return cls(**values)


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every setting of a loaded document."""
    pairs = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + yaml_key(f.name)
        pairs += flatten(value, key + ".") if dataclasses.is_dataclass(value) else [(key, value)]
    return pairs


def rows(cls: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default as the docs show it, doc)`` of every setting of a document class."""
    found = []
    hints: dict[str, Any] = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + yaml_key(f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            found += rows(hints[f.name], key + ".")
        else:
            found.append((key, _show(default_of(f)), f.metadata["doc"]))
    return found


def table(cls: Any) -> str:
    """The reference of a document class as a Markdown table (key, default, meaning)."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | `{d}` | {doc} |" for k, d, doc in rows(cls)]
    return "\n".join(lines)


def default_of(f: dataclasses.Field[Any]) -> Any:
    """The default of a field, whether a value or a factory."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]


def plain(value: Any) -> Any:
    """``value`` as YAML and JSON write it: lists for tuples, a mapping for ``Env``, strings for enums."""
    if isinstance(value, tuple):
        is_env = value and all(isinstance(v, tuple) for v in value)
        return dict(value) if is_env else list(value)
    return str(value) if isinstance(value, enum.Enum) else value


def _show(value: Any) -> str:
    value = plain(value)
    if isinstance(value, bool | list | dict) or value in ("", None):
        return json.dumps(value)
    return str(value)


def _check(check: Check | None, kind: Any, value: Any, key: str) -> None:
    if check is None or value is None:
        return
    items = [name for name, _ in value] if kind == Env else value if isinstance(value, tuple) else [value]
    for item in items:
        problem = check.problem(item)
        if problem:
            raise ConfigError(f"{key}: {problem}, got {item!r}")


def _convert(kind: Any, value: Any, key: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key}: expected {expected}, got {value!r}")

    if isinstance(kind, types.UnionType):  # X | None: null stands for None
        (inner,) = (arg for arg in typing.get_args(kind) if arg is not type(None))
        return None if value is None else _convert(inner, value, key)
    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind in (int, float):
        wrong_int = kind is int and isinstance(value, float)
        if isinstance(value, bool) or not isinstance(value, int | float) or wrong_int:
            raise bad("an integer" if kind is int else "a number")
        return kind(value)
    if kind is str or (isinstance(kind, type) and issubclass(kind, enum.StrEnum)):
        if not isinstance(value, str):
            raise bad("a string")
        return value if kind is str else _member(kind, value, key)
    return _convert_collection(kind, value, bad)


def _member(kind: Any, value: str, key: str) -> Any:
    choices = [member.value for member in kind]
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return kind(value)


def _convert_collection(kind: Any, value: Any, bad: Callable[[str], ConfigError]) -> Any:
    if kind == Env:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise bad("a mapping of variable names to strings")
        if not all(isinstance(v, str) for v in value.values()):
            raise bad("a mapping of variable names to strings (quote numbers: '1')")
        return tuple(value.items())
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise bad("a mapping of strings")
        return dict(value)
    raise AssertionError(f"unsupported config type {kind}")  # a bug in a document class, not input
