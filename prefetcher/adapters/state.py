"""The agent's state file on disk: read as bytes and checked, written atomically, one agent at a time.

Beside ``state.json`` live two files the agent creates itself: ``state.json.lock``, held with an
exclusive ``flock`` by the one agent using this state (it holds that agent's pid, for the refusal
message), and ``state.json.key``, the node's random key that proves the agent's ownership claims.

Threat model. The state file lives on a root-owned hostPath. Whoever can write it is root on the
node and could remove images through the CRI socket directly, so the agent does not try to resist
a deliberate attacker there. What it refuses is a claim it did not write: an entry edited by hand,
a file copied from another node or from an older agent, a leftover of a second agent. Such a claim
carries no valid proof, or names an image whose runtime record (id, size) is not the one reported
after the agent's own pull, and the image is then never evicted on its say-so.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import tempfile
from pathlib import Path

from prefetcher.core.state import AgentState, dump_state, parse_state
from prefetcher.errors import StateError

log = logging.getLogger(__name__)
_KEY_BYTES = 32


class StateFile:
    """The agent's state on disk, written with write-to-temp, fsync and rename.

    ``writable=False`` (``plan``) reads without creating anything: no key, no lock, no set-aside.
    """

    def __init__(self, path: Path, *, writable: bool = True) -> None:
        self._path = path
        self._writable = writable
        self._key_path = path.with_name(path.name + ".key")
        self._key: bytes | None = None

    def load(self) -> AgentState:
        """The saved state; empty when there is none. An invalid file is set aside, not trusted."""
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        except OSError as err:
            raise StateError(f"cannot read state file {self._path}: {err.strerror or err}") from err
        try:
            state, unproven = parse_state(data.decode("utf-8"), key=self._read_key())
        except UnicodeDecodeError as err:
            return self._set_aside(f"not UTF-8 at byte {err.start}")
        except StateError as err:
            return self._set_aside(str(err))
        if unproven:
            log.warning(
                "state file %s: not trusting the ownership claims on %d image(s) (%s): their proof does "
                "not verify with this node's key %s, so this agent did not write them; those images "
                "are never evicted by it",
                self._path,
                len(unproven),
                ", ".join(unproven[:3]) + (", …" if len(unproven) > 3 else ""),
                self._key_path,
            )
        return state

    def save(self, state: AgentState) -> None:
        """Replace the file atomically so a crash leaves the old or the new state, never half."""
        data = dump_state(state, key=self._read_key())
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".state-")
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
            _fsync_dir(self._path.parent)
        except OSError as err:
            raise StateError(f"cannot write state file {self._path}: {err.strerror or err}") from err

    def _set_aside(self, problem: str) -> AgentState:
        # Starting empty is safe: the agent only evicts images it can prove it pulled.
        aside = self._path.with_suffix(".corrupt")
        if not self._writable:
            log.error("state file %s is invalid (%s); the agent will set it aside", self._path, problem)
            return AgentState()
        try:
            os.replace(self._path, aside)
        except OSError as err:  # the next save replaces the file anyway: never a crash loop
            log.error("state file %s is invalid (%s) and cannot be moved (%s); starting empty",
                      self._path, problem, err.strerror or err)
            return AgentState()
        log.error("state file %s is invalid (%s); moved to %s, starting empty", self._path, problem, aside)
        return AgentState()

    def _read_key(self) -> bytes:
        """This node's proof key, created on first use by a writable state file."""
        if self._key is None:
            self._key = self._load_key()
        return self._key

    def _load_key(self) -> bytes:
        try:
            key = bytes.fromhex(self._key_path.read_text(encoding="ascii").strip())
            if len(key) >= 16:
                return key
            problem = "too short"
        except FileNotFoundError:
            return self._create_key() if self._writable else b""
        except (OSError, ValueError) as err:
            problem = str(err)
        if not self._writable:
            return b""
        log.error(
            "state key %s is unusable (%s); replacing it: earlier claims are not trusted",
            self._key_path,
            problem,
        )
        return self._create_key(replace=True)

    def _create_key(self, *, replace: bool = False) -> bytes:
        key = secrets.token_bytes(_KEY_BYTES)
        try:
            self._key_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._key_path.parent, prefix=".key-")
            with os.fdopen(fd, "w") as handle:
                handle.write(key.hex() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            if replace:
                os.replace(tmp, self._key_path)
            else:  # two starts racing for the first key: the first one wins, the other reads it
                try:
                    os.link(tmp, self._key_path)
                except FileExistsError:
                    key = bytes.fromhex(self._key_path.read_text(encoding="ascii").strip())
                finally:
                    os.unlink(tmp)
            _fsync_dir(self._key_path.parent)
        except OSError as err:
            raise StateError(f"cannot write state key {self._key_path}: {err.strerror or err}") from err
        return key


class StateLock:
    """The exclusive lock that makes one agent the only user of a state file."""

    def __init__(self, state_path: Path) -> None:
        self._state_path = state_path
        self._path = state_path.with_name(state_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise StateError naming the holder's pid; held until ``release``."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise StateError(f"cannot open lock file {self._path}: {err.strerror or err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            holder = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateError(
                f"state file {self._state_path} is in use by another agent (pid {holder}, lock "
                f"{self._path}); one agent per state file: stop that one, or give this one its own stateFile"
            ) from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the kernel does so too when the process dies)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
