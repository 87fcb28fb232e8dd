"""The serving certificate: the current ``SSLContext``, rebuilt when the files rotate. Does I/O.

Secret volumes (kubelet swaps a symlink) and cert-manager replace the certificate and key in
place; the files are checked on every new connection (two ``stat`` calls) and a pair that fails
to load, such as a rotation caught half written, leaves the previous context in service.

The listening socket keeps one context for its whole life (``listener_context``); its SNI
callback, which OpenSSL runs for every ClientHello (with or without a server name), hands each
handshake the current context, so a rotation needs no restart and no new listener.
"""

from __future__ import annotations

import calendar
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

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        *,
        on_reload: Callable[[str], None],
        on_expiry: Callable[[float], None] = lambda _timestamp: None,
    ) -> None:
        self._paths = (Path(cert_path), Path(key_path))
        self._on_reload = on_reload
        self._on_expiry = on_expiry
        self._lock = threading.Lock()
        try:
            self._stamp = _stamp(*self._paths)
            self._context = self._load()
        except (OSError, ssl.SSLError, ValueError) as error:
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
                except (OSError, ssl.SSLError, ValueError) as error:
                    self._failed = stamp  # retried once either file changes again
                    self._on_reload("error")
                    log.warning("keeping the previous certificate: cannot load the new one: %s", error)
        return self._context

    def listener_context(self) -> ssl.SSLContext:
        """A context for the listening socket that serves each handshake with ``context()``.

        It holds no certificate of its own: OpenSSL runs the callback before it picks one.
        """
        listener = self._new_context()

        def pick(connection: ssl.SSLObject, _server_name: str | None, _current: ssl.SSLContext) -> None:
            connection.context = self.context()

        listener.sni_callback = pick
        return listener

    def _load(self) -> ssl.SSLContext:
        context = self._new_context()
        context.load_cert_chain(str(self._paths[0]), str(self._paths[1]))
        self._on_expiry(certificate_not_after(self._paths[0].read_bytes()))
        return context

    @staticmethod
    def _new_context() -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        return context


def certificate_not_after(pem: bytes) -> float:
    """The ``notAfter`` of the first certificate in ``pem``, as a Unix timestamp; ``ValueError`` if none."""
    text = pem.decode("ascii", errors="replace")
    begin = text.find("-----BEGIN CERTIFICATE-----")
    if begin < 0:
        raise ValueError("no PEM certificate found")
    try:
        der = ssl.PEM_cert_to_DER_cert(text[begin : text.index("-----END CERTIFICATE-----", begin) + 25])
        return _not_after(der)
    except (IndexError, ValueError) as error:
        raise ValueError(f"cannot read the certificate's notAfter: {error}") from error


def _not_after(der: bytes) -> float:
    # Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serialNumber,
    # signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... } } (RFC 5280 4.1)
    certificate = _children(der)[0][1]
    tbs = _children(_children(certificate)[0][1])
    fields = tbs[1:] if tbs[0][0] == 0xA0 else tbs
    not_after_tag, not_after = _children(fields[3][1])[1]
    digits = not_after.decode("ascii").rstrip("Z")
    if not_after_tag == 0x17:  # UTCTime YYMMDDHHMMSS: 50-99 are 19xx (RFC 5280 4.1.2.5.1)
        year = int(digits[:2])
        digits = f"{1900 + year if year >= 50 else 2000 + year}{digits[2:]}"
    parts = [int(digits[i : i + n]) for i, n in ((0, 4), (4, 2), (6, 2), (8, 2), (10, 2), (12, 2))]
    return float(calendar.timegm((*parts, 0, 0, 0)))


def _children(der: bytes) -> list[tuple[int, bytes]]:
    """The (tag, contents) of each DER element in ``der``, or of the one constructed element it is."""
    elements = []
    offset = 0
    while offset < len(der):
        tag, length = der[offset], der[offset + 1]
        offset += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(der[offset : offset + size], "big")
            offset += size
        elements.append((tag, der[offset : offset + length]))
        offset += length
    if offset != len(der):
        raise ValueError("truncated DER certificate")
    return elements
