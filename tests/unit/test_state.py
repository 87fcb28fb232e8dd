"""The state file: every field checked, invalid files set aside, unproven claims dropped, one agent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prefetcher.adapters.state import StateFile, StateLock
from prefetcher.core.model import ManagedImage
from prefetcher.core.state import AgentState, BackoffEntry, dump_state, parse_state
from prefetcher.errors import StateError

KEY = b"k" * 32
IMAGE = ManagedImage("h/m@sha256:1", "sha256:abc", 10.0, 20.0, 300, 150)


def doc(**changes: object) -> dict[str, object]:
    base = json.loads(dump_state(AgentState({IMAGE.ref: IMAGE}, {"h/x": BackoffEntry(2, 9.0, "e")}), key=KEY))
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = base
        for part in parents:
            target = target[{"m": IMAGE.ref, "b": "h/x"}.get(part, part)]
        if value is ...:
            del target[leaf]
        else:
            target[leaf] = value
    return base


def test_a_state_round_trips_with_its_proofs() -> None:
    state = AgentState({IMAGE.ref: IMAGE}, {"h/x": BackoffEntry(2, 9.0, "e")})
    assert parse_state(dump_state(state, key=KEY), key=KEY) == (state, ())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 1}, "version 1, expected 2"),
        ({"version": "2"}, "version '2', expected 2"),
        ({"managed__m__last_desired_at": "never"}, "last_desired_at: expected a finite number, got 'never'"),
        ({"managed__m__pulled_at": True}, "pulled_at: expected a finite number, got True"),
        ({"managed__m__cost_bytes": -1}, "cost_bytes: expected a non-negative integer, got -1"),
        ({"managed__m__cost_bytes": 1.5}, "cost_bytes: expected a non-negative integer, got 1.5"),
        ({"managed__m__image_id": ""}, "image_id: expected a non-empty string"),
        ({"managed__m__ref": "other"}, "ref: 'other' differs from its key"),
        ({"managed__m__extra": 1}, "unknown field 'extra'"),
        ({"managed__m__image_size_bytes": ...}, "missing 'image_size_bytes'"),
        ({"backoff__b__until": "soon"}, "until: expected a finite number, got 'soon'"),
        ({"backoff__b__failures": 0}, "failures: expected at least 1, got 0"),
        ({"backoff__b__last_error": None}, "last_error: expected a string, got None"),
        ({"backoff": []}, "backoff: expected an object, got list"),
        ({"extra": {}}, "unknown field 'extra'"),
    ],
)
def test_every_field_is_checked_and_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(StateError, match=re.escape(message)):
        parse_state(json.dumps(doc(**changes)), key=KEY)


@pytest.mark.parametrize("text", ["[]", "null", "1e999", '{"version": 2}', "{"])
def test_other_json_is_a_state_error(text: str) -> None:
    with pytest.raises(StateError):
        parse_state(text, key=KEY)


def test_a_claim_not_proven_with_this_nodes_key_is_dropped() -> None:
    forged = doc(managed__m__proof="0" * 64)
    state, unproven = parse_state(json.dumps(forged), key=KEY)
    assert state.managed == {} and unproven == (IMAGE.ref,)
    assert state.backoff  # back-off is kept: forging it only delays a pull
    _, other_node = parse_state(json.dumps(doc()), key=b"o" * 32)
    assert other_node == (IMAGE.ref,)


@pytest.mark.parametrize(
    "data", [b"\xff\xfe{}", json.dumps(doc(managed__m__last_desired_at="never")).encode(), b"", b"{"]
)
def test_an_invalid_state_file_is_set_aside_and_the_agent_starts_empty(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(data)
    assert StateFile(path).load() == AgentState()
    assert not path.exists() and (tmp_path / "state.corrupt").read_bytes() == data


def test_plan_reads_the_state_without_creating_or_moving_anything(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"\xff")
    assert StateFile(path, writable=False).load() == AgentState()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_the_key_is_created_once_and_proves_the_agents_own_claims_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = AgentState({IMAGE.ref: IMAGE})
    StateFile(path).save(state)
    assert StateFile(path).load() == state
    assert os.stat(tmp_path / "state.json.key").st_mode & 0o077 == 0
    (tmp_path / "state.json.key").unlink()  # a lost key: earlier claims are no longer proven
    assert StateFile(path).load() == AgentState()


def test_a_second_holder_of_the_lock_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    code = (
        "import sys; from pathlib import Path; from prefetcher.adapters.state import StateLock; "
        "StateLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        try:
            assert holder.stdout.readline() == "locked\n"
            with pytest.raises(StateError, match=rf"in use by another agent \(pid {holder.pid}, lock "):
                StateLock(path).acquire()
        finally:
            holder.stdin.close()
            holder.wait(timeout=10)
    lock = StateLock(path)
    lock.acquire()  # released by the kernel when the holder exited
    lock.release()
