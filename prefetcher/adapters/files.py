"""The YAML documents the agent reads (config, models file), as bytes decoded with a clear error.

The state file is ``adapters.state``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import Generic, TypeVar

from prefetcher.core.model import ModelRequest
from prefetcher.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


class ReloadOutcome(StrEnum):
    """What became of a changed file: the ``outcome`` label of ``prefetcher_config_reloads_total``."""

    SUCCESS = "success"
    INVALID = "invalid"  # read but rejected: the last good version stays
    ERROR = "error"  # could not be read: the last good version stays


def read_config_file(path: Path) -> str:
    """The text of a config or models file; unreadable or not UTF-8, a ``ConfigError`` naming it."""
    return decode_document(read_document(path), path)


def read_document(path: Path) -> bytes:
    """The bytes of a config or models file; an unreadable one is a ``ConfigError`` naming it."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err


def decode_document(data: bytes, path: Path) -> str:
    """``data`` as UTF-8 (YAML's encoding here); anything else is a ``ConfigError`` naming the byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = data[err.start : err.start + 1].hex()
        raise ConfigError(f"{path}: not valid UTF-8 (byte 0x{bad} at offset {err.start})") from err


class WatchedFile(Generic[T]):
    """A YAML document reloaded when its content changes; an invalid one keeps the last good value.

    ConfigMap volumes update by swapping a symlink, so the content is compared, not the mtime. The
    bytes are compared before decoding, so an edit that cannot be decoded is reported once.
    """

    def __init__(
        self, path: Path, parse: Callable[[str], T], *, on_reload: Callable[[ReloadOutcome, str], None]
    ) -> None:
        self._path = path
        self._parse = parse
        self._on_reload = on_reload
        self._data = read_document(path)  # the first load must succeed: fail fast at start-up
        self._value: T = parse(decode_document(self._data, path))

    def current(self) -> T:
        """The last good value, after picking up any change on disk."""
        try:
            data = read_document(self._path)
        except ConfigError as err:
            self._report(ReloadOutcome.ERROR, f"{err}; keeping the last good version")
            return self._value
        if data == self._data:
            return self._value
        self._data = data
        try:
            self._value = self._parse(decode_document(data, self._path))
        except ConfigError as err:
            message = str(err) if str(err).startswith(str(self._path)) else f"{self._path}: {err}"
            self._report(ReloadOutcome.INVALID, f"{message}; keeping the last good version")
            return self._value
        self._report(ReloadOutcome.SUCCESS, f"reloaded {self._path}")
        return self._value

    def _report(self, outcome: ReloadOutcome, message: str) -> None:
        (log.info if outcome is ReloadOutcome.SUCCESS else log.error)("%s", message)
        self._on_reload(outcome, message)


class FileModelSource:
    """The models file as a model source (for nodes without KServe, and the demo)."""

    def __init__(self, models: WatchedFile[tuple[ModelRequest, ...]]) -> None:
        self._models = models

    def requests(self) -> Iterable[ModelRequest]:
        """The models listed in the file now."""
        return self._models.current()
