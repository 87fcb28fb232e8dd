"""Lenient readers of Kubernetes objects decoded from JSON: a field of the wrong shape reads as empty.

Objects from the API server or a cache are trusted in shape but not in completeness; reading a
missing or malformed field as empty keeps one odd object from stopping a whole pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


def mapping(value: object) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def mappings(value: object) -> Iterator[Mapping[str, Any]]:
    """The mappings in ``value`` if it is a list (other items skipped), else none."""
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, Mapping))
