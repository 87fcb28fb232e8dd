"""Test support: a plain-HTTP proxy in front of a test registry that can hold one blob mid-transfer.

``gated_proxy(registry, digest, hold_after=N)`` forwards every request (method, path, headers,
body) to the registry and streams the answer back. The first GET of blob ``digest`` stops after
``N`` bytes of its body until ``release()`` (or the client goes away): a pull that is surely under
way, with part of a layer on disk, for a test to interrupt by restarting the runtime. Later
requests, ranged resumptions included, pass through whole.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.registry import RunningRegistry

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
_CHUNK = 1 << 16
HOLD_LIMIT_SECONDS = 120.0


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
        if method != "GET" or not path.endswith(f"/blobs/{self.digest}"):
            return False
        with self.lock:
            first, self.used = not self.used, True
        return first


@dataclass
class GatedProxy:
    """A running proxy: ``host`` is ``127.0.0.1:PORT``."""

    host: str
    gate: Gate


def _handler(registry: RunningRegistry, gate: Gate) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream = http.client.HTTPConnection(registry.host, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.end_headers()
                self._copy(answer, held=gate.claim(self.path, self.command))
            finally:
                upstream.close()

        def _copy(self, answer: http.client.HTTPResponse, *, held: bool) -> None:
            sent = 0
            while chunk := answer.read(_CHUNK):
                if held and sent + len(chunk) > gate.hold_after:
                    chunk = chunk[: max(gate.hold_after - sent, 0)]
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    gate.holding.set()
                    # Hold until released; the runtime going away ends this connection either way.
                    gate.released.wait(HOLD_LIMIT_SECONDS)
                    self.close_connection = True  # the body is short of its Content-Length
                    return
                self.wfile.write(chunk)
                sent += len(chunk)

        def do_GET(self) -> None:
            self._forward()

        def do_HEAD(self) -> None:
            self._forward()

    return Forward


@contextmanager
def gated_proxy(registry: RunningRegistry, digest: str, *, hold_after: int) -> Iterator[GatedProxy]:
    """Serve the proxy on a free loopback port until the block exits."""
    gate = Gate(digest, hold_after)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(registry, gate))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield GatedProxy(f"127.0.0.1:{server.server_address[1]}", gate)
    finally:
        gate.release()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
