"""The image filesystem's usage, measured as kubelet's image GC measures it."""

from __future__ import annotations

import os
from pathlib import Path

from prefetcher.core.model import DiskState
from prefetcher.errors import PrefetchError


class StatvfsDisk:
    """``statvfs`` of a path on the image filesystem.

    kubelet computes usage as capacity minus *available* (blocks free to non-root users), so
    reserved blocks count as used here too; CRI's ImageFsInfo counts only the snapshotter.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def usage(self) -> DiskState:
        """Total and used bytes of the filesystem holding ``path``."""
        try:
            st = os.statvfs(self._path)
        except OSError as err:
            raise PrefetchError(f"cannot measure image filesystem at {self._path}: {err}") from err
        total = st.f_blocks * st.f_frsize
        return DiskState(total_bytes=total, used_bytes=total - st.f_bavail * st.f_frsize)
