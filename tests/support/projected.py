"""Test support: a file in a directory laid out and updated as kubelet does for a ConfigMap volume.

Kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go) writes each version into a new
``..<timestamp>`` directory, points a ``..data_tmp`` symlink at it and renames that over ``..data``,
so a reader sees the old or the new version whole; each key is a symlink ``<key> -> ..data/<key>``,
and the previous version's directory is removed afterwards.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

_versions = itertools.count()


class ProjectedFile:
    """One key of a ConfigMap volume; ``path`` is what the reader opens."""

    def __init__(self, directory: Path, key: str) -> None:
        self.directory, self.key = directory, key
        self.path = directory / key
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, text: str) -> None:
        """Swap in a new version atomically; the previous version's directory is removed after."""
        data = self.directory / "..data"
        previous = os.readlink(data) if data.is_symlink() else None
        version = self.directory / f"..2026_01_01_00_00_00.{next(_versions):09d}"
        version.mkdir()
        (version / self.key).write_text(text)
        staged = self.directory / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, data)
        if not self.path.is_symlink():
            self.path.symlink_to(f"..data/{self.key}")
        if previous is not None:
            shutil.rmtree(self.directory / previous)
