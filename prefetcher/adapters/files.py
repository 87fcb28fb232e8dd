"""Files the agent reads and writes: its state file (atomically) and watched YAML documents."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, TypeVar

from prefetcher.core.model import ModelRequest
from prefetcher.core.state import AgentState, dump_state, parse_state
from prefetcher.errors import ConfigError, StateError

log = logging.getLogger(__name__)
T = TypeVar("T")


class StateFile:
    """The agent's state on disk, written with write-to-temp, fsync and rename."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def load(self) -> AgentState:
        """The saved state; empty when there is none. A corrupt file is set aside, not trusted."""
        try:
            text = self._path.read_text()
        except FileNotFoundError:
            return AgentState()
        except OSError as err:
            raise StateError(f"cannot read state file {self._path}: {err}") from err
        try:
            return parse_state(text)
        except StateError as err:
            aside = self._path.with_suffix(".corrupt")
            os.replace(self._path, aside)
            # Starting empty is safe: the agent only evicts images it remembers pulling.
            log.error("state file %s is corrupt (%s); moved to %s, starting empty", self._path, err, aside)
            return AgentState()

    def save(self, state: AgentState) -> None:
        """Replace the file atomically so a crash leaves the old or the new state, never half."""
        data = dump_state(state)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".state-")
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
            dir_fd = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            raise StateError(f"cannot write state file {self._path}: {err}") from err


def read_config_file(path: Path) -> str:
    """The text of a config or models file; an unreadable one is a ``ConfigError`` naming it."""
    try:
        return path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err


class WatchedFile(Generic[T]):
    """A YAML document reloaded when its content changes; an invalid one keeps the last good value.

    ConfigMap volumes update by swapping a symlink, so the content is compared, not the mtime.
    """

    def __init__(
        self, path: Path, parse: Callable[[str], T], *, on_reload: Callable[[str, str], None]
    ) -> None:
        self._path = path
        self._parse = parse
        self._on_reload = on_reload
        self._text: str = read_config_file(path)  # the first load must succeed: fail fast at start-up
        self._value: T = parse(self._text)

    def current(self) -> T:
        """The last good value, after picking up any change on disk."""
        try:
            text = self._path.read_text()
        except OSError as err:
            self._report("error", f"cannot read {self._path}: {err}; keeping the last good version")
            return self._value
        if text == self._text:
            return self._value
        self._text = text
        try:
            self._value = self._parse(text)
        except ConfigError as err:
            self._report("invalid", f"{self._path}: {err}; keeping the last good version")
            return self._value
        self._report("success", f"reloaded {self._path}")
        return self._value

    def _report(self, outcome: str, message: str) -> None:
        (log.info if outcome == "success" else log.error)("%s", message)
        self._on_reload(outcome, message)


class FileModelSource:
    """The models file as a model source (for nodes without KServe, and the demo)."""

    def __init__(self, models: WatchedFile[tuple[ModelRequest, ...]]) -> None:
        self._models = models

    def requests(self) -> Iterable[ModelRequest]:
        """The models listed in the file now."""
        return self._models.current()
