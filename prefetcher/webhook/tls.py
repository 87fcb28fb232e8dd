"""The serving certificate: the current ``SSLContext``, rebuilt when the files rotate. Does I/O.

Secret volumes (kubelet swaps a symlink) and cert-manager replace the certificate and key in
place; the files are checked on every new connection (two ``stat`` calls) and a pair that fails
to load, such as a rotation caught half written, leaves the previous context in service.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from prefetcher.errors import ConfigError

log = logging.getLogger(__name__)


def _stamp(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    stats = [path.stat() for path in paths]
    return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in stats)


class CertificateStore:
    """The current server ``SSLContext``, rebuilt when the certificate or key file changes."""

    def __init__(self, cert_path: Path, key_path: Path, *, on_reload: Callable[[str], None]) -> None:
        self._paths = (Path(cert_path), Path(key_path))
        self._on_reload = on_reload
        self._lock = threading.Lock()
        try:
            self._stamp = _stamp(*self._paths)
            self._context = self._load()
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"cannot load certificate {cert_path} and key {key_path}: {error}") from error
        self._failed: tuple[tuple[int, int, int], ...] | None = None

    def context(self) -> ssl.SSLContext:
        """The context for a new connection, reloaded first if the files changed."""
        try:
            stamp = _stamp(*self._paths)
        except OSError:  # mid-rotation: a file is briefly missing; keep serving the old pair
            return self._context
        if stamp in (self._stamp, self._failed):
            return self._context
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._context = self._load()
                    self._stamp, self._failed = stamp, None
                    self._on_reload("ok")
                    log.info("reloaded serving certificate %s", self._paths[0])
                except (OSError, ssl.SSLError) as error:
                    self._failed = stamp  # retried once either file changes again
                    self._on_reload("error")
                    log.warning("keeping the previous certificate: cannot load the new one: %s", error)
        return self._context

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        context.load_cert_chain(str(self._paths[0]), str(self._paths[1]))
        return context
