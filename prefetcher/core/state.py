"""The agent's memory across restarts: which images it pulled and its back-off state (pure codec).

Every field is checked on the way in: a file with a wrong type, a missing or unknown field, or a
number that is not finite is a ``StateError`` as a whole, and the agent sets it aside. An ownership
claim (a ``managed`` entry) also carries a proof: an HMAC, under a key only this node's agent
holds, of what the runtime reported right after the agent's own pull (reference, image id, image
size, time). A claim whose proof does not verify was not written by this agent: it is dropped, so
the image is never evicted on its say-so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from prefetcher.core.model import ManagedImage
from prefetcher.errors import StateError

VERSION = 2
_MAX_INT = 2**62  # far above any byte count or failure count; rejects absurd values early


@dataclass(frozen=True)
class BackoffEntry:
    """Consecutive failures of one reference and when it may be tried again."""

    failures: int
    until: float
    last_error: str = ""


@dataclass
class AgentState:
    """Mutable state owned by the reconciler; serialised once per pass when it changed."""

    managed: dict[str, ManagedImage] = field(default_factory=dict)
    backoff: dict[str, BackoffEntry] = field(default_factory=dict)


def prove(managed: ManagedImage, key: bytes) -> str:
    """The proof of an ownership claim: HMAC-SHA256 of what the runtime reported after the pull."""
    facts = [managed.ref, managed.image_id, managed.image_size_bytes, managed.pulled_at]
    message = json.dumps(facts, separators=(",", ":")).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def dump_state(state: AgentState, *, key: bytes) -> str:
    """Serialise to stable JSON (sorted keys) so that an unchanged state writes the same bytes."""
    doc = {
        "version": VERSION,
        "managed": {ref: {**asdict(m), "proof": prove(m, key)} for ref, m in state.managed.items()},
        "backoff": {ref: asdict(b) for ref, b in state.backoff.items()},
    }
    return json.dumps(doc, sort_keys=True, indent=1) + "\n"


def parse_state(text: str, *, key: bytes) -> tuple[AgentState, tuple[str, ...]]:
    """Parse what ``dump_state`` wrote: the state, and the references whose claim was not proven.

    Raises StateError, naming the field, on anything ``dump_state`` could not have written.
    """
    try:
        doc: Any = json.loads(text)
    except ValueError as err:
        raise StateError(f"not JSON: {err}") from err
    _fields(doc, "state", {"version", "managed", "backoff"})
    if type(doc["version"]) is not int or doc["version"] != VERSION:
        raise StateError(f"version {doc['version']!r}, expected {VERSION}")
    managed: dict[str, ManagedImage] = {}
    unproven: list[str] = []
    for ref, entry in _mapping(doc["managed"], "managed").items():
        image, proof = _managed(ref, entry)
        if hmac.compare_digest(proof, prove(image, key)):
            managed[ref] = image
        else:
            unproven.append(ref)
    backoff = {ref: _backoff(ref, entry) for ref, entry in _mapping(doc["backoff"], "backoff").items()}
    return AgentState(managed, backoff), tuple(unproven)


def _managed(ref: str, entry: Any) -> tuple[ManagedImage, str]:
    where = f"managed[{ref!r}]"
    _fields(entry, where, {*ManagedImage.__dataclass_fields__, "proof"})
    if entry["ref"] != ref:
        raise StateError(f"{where}.ref: {entry['ref']!r} differs from its key")
    image = ManagedImage(
        ref=ref,
        image_id=_text(entry, where, "image_id", empty=False),
        pulled_at=_number(entry, where, "pulled_at"),
        last_desired_at=_number(entry, where, "last_desired_at"),
        cost_bytes=_count(entry, where, "cost_bytes"),
        image_size_bytes=_count(entry, where, "image_size_bytes"),
    )
    return image, _text(entry, where, "proof", empty=False)


def _backoff(ref: str, entry: Any) -> BackoffEntry:
    where = f"backoff[{ref!r}]"
    _fields(entry, where, set(BackoffEntry.__dataclass_fields__))
    failures = _count(entry, where, "failures")
    if failures < 1:
        raise StateError(f"{where}.failures: expected at least 1, got {failures}")
    return BackoffEntry(failures, _number(entry, where, "until"), _text(entry, where, "last_error"))


def _fields(doc: Any, where: str, expected: set[str]) -> None:
    if not isinstance(doc, dict):
        raise StateError(f"{where}: expected an object, got {type(doc).__name__}")
    missing, unknown = expected - set(doc), set(doc) - expected
    if missing or unknown:
        problem = f"missing {sorted(missing)[0]!r}" if missing else f"unknown field {sorted(unknown)[0]!r}"
        raise StateError(f"{where}: {problem}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StateError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _number(entry: dict[str, Any], where: str, name: str) -> float:
    value = entry[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StateError(f"{where}.{name}: expected a finite number, got {value!r}")
    if not 0 <= value < _MAX_INT:
        raise StateError(f"{where}.{name}: out of range, got {value!r}")
    return float(value)


def _count(entry: dict[str, Any], where: str, name: str) -> int:
    value = entry[name]
    if type(value) is not int or not 0 <= value < _MAX_INT:
        raise StateError(f"{where}.{name}: expected a non-negative integer, got {value!r}")
    return value


def _text(entry: dict[str, Any], where: str, name: str, *, empty: bool = True) -> str:
    value = entry[name]
    if not isinstance(value, str) or (not empty and not value):
        raise StateError(f"{where}.{name}: expected a{'' if empty else ' non-empty'} string, got {value!r}")
    return value
