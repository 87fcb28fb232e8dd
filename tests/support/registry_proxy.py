"""Test support: plain-HTTP proxies in front of a test registry that watch its blob transfers.

Both forward every request (method, path, headers, body) to the upstream registry over a
connection of its own and stream the answer back; they differ in what they do with the body.

``gated_proxy(registry, digest, hold_after=N)``: the first GET of blob ``digest`` stops after
``N`` bytes of its body until ``release()`` (or the client goes away): a pull that is surely under
way, with part of a layer on disk, for a test to interrupt by restarting the runtime. Later
requests, ranged resumptions included, pass through whole.

``counting_proxy(upstream)``: counts, per blob digest, the GETs answered, the body bytes sent, who
asked (the User-Agent's product: ``containerd``, ``distribution``, ``python-urllib``…), how many
transfers of it ran at once at most, and when its first and last bytes went out; and the TCP
connections open at once. Put it in front of the origin registry and every byte the origin
serves is counted. ``hold(digest)`` makes transfers of a blob wait, headers sent, before their
body until ``release`` — a window kept open on purpose, for a test to see what arrives in it.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from typing import BinaryIO

from tests.support.registry import RunningRegistry, loopback_server

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
_CHUNK = 1 << 20
_BLOB_PATH = re.compile(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})(?:\?.*)?$")
HOLD_LIMIT_SECONDS = 120.0
UPSTREAM_TIMEOUT_SECONDS = 120.0


def blob_digest(path: str) -> str:
    """The digest a ``/v2/<name>/blobs/<digest>`` path asks for, else ``""``."""
    match = _BLOB_PATH.match(path)
    return match.group(1) if match else ""


# A body copier: (method, path, request headers, upstream answer, client stream) -> close after.
Copier = Callable[[str, str, dict[str, str], http.client.HTTPResponse, BinaryIO], bool]


def _handler(
    upstream: str, copy: Copier, on_connection: Callable[[int], None]
) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            on_connection(+1)

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                on_connection(-1)

        def log_message(self, format: str, *args: object) -> None:
            return

        def handle(self) -> None:
            # A client may reset a kept-alive connection instead of closing it (Distribution 3 does).
            with suppress(ConnectionResetError, BrokenPipeError):
                super().handle()

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn = http.client.HTTPConnection(upstream, timeout=UPSTREAM_TIMEOUT_SECONDS, blocksize=_CHUNK)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.end_headers()
                if copy(self.command, self.path, headers, answer, self.wfile):  # type: ignore[arg-type]
                    self.close_connection = True  # the body is short of its Content-Length
            finally:
                conn.close()

        def do_GET(self) -> None:
            self._forward()

        def do_HEAD(self) -> None:
            self._forward()

    return Forward


@contextmanager
def _serving(upstream: str, copy: Copier, on_connection: Callable[[int], None]) -> Iterator[str]:
    """Serve a forwarding proxy on a free loopback port; yields its ``127.0.0.1:PORT``."""
    with loopback_server(_handler(upstream, copy, on_connection)) as url:
        yield url.removeprefix("http://")


# --- the gate --------------------------------------------------------------------------------


@dataclass
class Gate:
    """Where the held transfer stands; ``holding`` is set once ``hold_after`` bytes went out."""

    digest: str
    hold_after: int
    holding: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    used: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def release(self) -> None:
        """Let the held transfer (and every later one) go on."""
        self.released.set()

    def claim(self, path: str, method: str) -> bool:
        """True for the first GET of the gated blob."""
        if method != "GET" or blob_digest(path) != self.digest:
            return False
        with self.lock:
            first, self.used = not self.used, True
        return first

    def copy(
        self, method: str, path: str, headers: dict[str, str], answer: http.client.HTTPResponse, out: BinaryIO
    ) -> bool:
        held, sent = self.claim(path, method), 0
        while chunk := answer.read(_CHUNK):
            if held and sent + len(chunk) > self.hold_after:
                out.write(chunk[: max(self.hold_after - sent, 0)])
                out.flush()
                self.holding.set()
                # Hold until released; the runtime going away ends this connection either way.
                self.released.wait(HOLD_LIMIT_SECONDS)
                return True
            out.write(chunk)
            sent += len(chunk)
        return False


@dataclass
class GatedProxy:
    """A running proxy: ``host`` is ``127.0.0.1:PORT``."""

    host: str
    gate: Gate


@contextmanager
def gated_proxy(registry: RunningRegistry, digest: str, *, hold_after: int) -> Iterator[GatedProxy]:
    """Serve the proxy on a free loopback port until the block exits."""
    gate = Gate(digest, hold_after)
    try:
        with _serving(registry.host, gate.copy, lambda _: None) as host:
            yield GatedProxy(host, gate)
    finally:
        gate.release()


# --- the counter -----------------------------------------------------------------------------


@dataclass
class BlobTraffic:
    """What went out of one blob: GETs answered, body bytes, by whom, most at once, first/last byte."""

    gets: int = 0
    bytes_sent: int = 0
    by_agent: Counter[str] = field(default_factory=Counter)
    active: int = 0
    most_at_once: int = 0
    first_byte_at: float = 0.0
    last_byte_at: float = 0.0


def _product(user_agent: str) -> str:
    """``containerd/1.6.20 …`` -> ``containerd``."""
    return user_agent.split("/", 1)[0].split(" ", 1)[0].lower() or "-"


class TrafficCounter:
    """Thread-safe counts of blob transfers and open connections; ``copy`` is the proxy's copier."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[str, BlobTraffic] = {}
        self._holds: dict[str, threading.Event] = {}
        self.connections = 0
        self.most_connections = 0

    def connection(self, delta: int) -> None:
        with self._lock:
            self.connections += delta
            self.most_connections = max(self.most_connections, self.connections)

    def blob(self, digest: str) -> BlobTraffic:
        """A copy of the counts of ``digest`` (zeros when never asked for)."""
        with self._lock:
            now = self._blobs.get(digest, BlobTraffic())
            return replace(now, by_agent=Counter(now.by_agent))

    def bytes_sent(self) -> int:
        """Body bytes of every blob sent so far."""
        with self._lock:
            return sum(b.bytes_sent for b in self._blobs.values())

    def hold(self, digest: str) -> threading.Event:
        """Make later transfers of ``digest`` wait before their body until the event is set."""
        with self._lock:
            return self._holds.setdefault(digest, threading.Event())

    def release_all(self) -> None:
        """Let every held transfer go on."""
        with self._lock:
            holds = list(self._holds.values())
        for event in holds:
            event.set()

    def copy(
        self, method: str, path: str, headers: dict[str, str], answer: http.client.HTTPResponse, out: BinaryIO
    ) -> bool:
        digest = blob_digest(path)
        if method != "GET" or not digest or answer.status not in (200, 206):
            out.write(answer.read())
            return False
        with self._lock:
            traffic = self._blobs.setdefault(digest, BlobTraffic())
            traffic.gets += 1
            traffic.by_agent[_product(headers.get("User-Agent", ""))] += 1
            traffic.active += 1
            traffic.most_at_once = max(traffic.most_at_once, traffic.active)
            hold = self._holds.get(digest)
        try:
            if hold is not None:
                hold.wait(HOLD_LIMIT_SECONDS)
            while chunk := answer.read(_CHUNK):
                out.write(chunk)
                self._sent(traffic, len(chunk))
        finally:
            with self._lock:
                traffic.active -= 1
        return False

    def _sent(self, traffic: BlobTraffic, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            traffic.first_byte_at = traffic.first_byte_at or now
            traffic.last_byte_at = now
            traffic.bytes_sent += n


@dataclass(frozen=True)
class CountingProxy:
    """A running counting proxy: ``host`` is ``127.0.0.1:PORT``, forwarding to ``upstream``."""

    host: str
    upstream: str
    counter: TrafficCounter


@contextmanager
def counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    """Count what ``upstream`` (``host:port``, plain HTTP) serves through the proxy inside the block."""
    counter = TrafficCounter()
    with _serving(upstream, counter.copy, counter.connection) as host:
        try:
            yield CountingProxy(host, upstream, counter)
        finally:
            counter.release_all()
