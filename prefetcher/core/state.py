"""The agent's memory across restarts: which images it pulled and its back-off state (pure codec)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from prefetcher.core.model import ManagedImage
from prefetcher.errors import StateError

VERSION = 1


@dataclass(frozen=True)
class BackoffEntry:
    """Consecutive failures of one reference and when it may be tried again."""

    failures: int
    until: float
    last_error: str = ""


@dataclass
class AgentState:
    """Mutable state owned by the reconciler; serialised after every change."""

    managed: dict[str, ManagedImage] = field(default_factory=dict)
    backoff: dict[str, BackoffEntry] = field(default_factory=dict)


def dump_state(state: AgentState) -> str:
    """Serialise to stable JSON (sorted keys) so that an unchanged state writes the same bytes."""
    doc = {
        "version": VERSION,
        "managed": {ref: asdict(m) for ref, m in state.managed.items()},
        "backoff": {ref: asdict(b) for ref, b in state.backoff.items()},
    }
    return json.dumps(doc, sort_keys=True, indent=1) + "\n"


def parse_state(text: str) -> AgentState:
    """Parse what ``dump_state`` wrote; raises StateError on anything else."""
    try:
        doc: Any = json.loads(text)
        if doc.get("version") != VERSION:
            raise StateError(f"state file version {doc.get('version')!r}, expected {VERSION}")
        managed = {ref: ManagedImage(**m) for ref, m in doc["managed"].items()}
        backoff = {ref: BackoffEntry(**b) for ref, b in doc["backoff"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise StateError(f"state file is not valid: {err}") from err
    return AgentState(managed, backoff)
