"""The webhook's HTTPS server; with ``tls`` the only modules of ``prefetcher.webhook`` doing I/O.

``POST /mutate`` answers AdmissionReview v1 through ``handler.handle_review``; ``GET /healthz``
and ``GET /metrics`` serve probes and Prometheus. TLS only: every accepted socket is wrapped with
the context ``tls.CertificateStore`` holds, reloaded when the files rotate. One thread per
connection (HTTP/1.1 keep-alive), a bounded number of connections, bodies bounded in size, and a
reaper that closes any connection whose current request or idle period outlives its deadline,
so a slow client cannot hold a thread forever.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from prefetcher.errors import ConfigError
from prefetcher.webhook.config import WebhookConfig, load_webhook_config
from prefetcher.webhook.handler import handle_review
from prefetcher.webhook.metrics import WebhookMetrics
from prefetcher.webhook.tls import CertificateStore

log = logging.getLogger(__name__)
# Longer than the idle timeout of the API server's HTTP client (90 s), so the client, never this
# server, closes idle connections: a POST on a connection closed under it is not retried.
IDLE_SECONDS = 120.0
MAX_CONNECTIONS = 256
_CHUNK_BYTES = 64 * 1024
_LOGGED_OUTCOMES = frozenset({"mutated", "denied", "invalid", "error"})


class _Reaper:
    """Deadlines of open connections; ``run`` shuts down the sockets that pass theirs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}

    def arm(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._deadlines[sock] = time.monotonic() + seconds

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(sock, None)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            now = time.monotonic()
            with self._lock:
                expired = [s for s, deadline in self._deadlines.items() if deadline < now]
            for sock in expired:
                self.forget(sock)
                # The plain socket's shutdown (SSLSocket's drops its TLS state under the reader):
                # the thread blocked reading sees EOF and ends.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


@dataclass(frozen=True)
class _Services:
    config: WebhookConfig
    metrics: WebhookMetrics
    reaper: _Reaper


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, certs: CertificateStore, services: _Services) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.certs = certs
        self.services = services
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup nothing here needs.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wrapped = self.certs.context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.services.metrics.requests.labels("rejected").inc()
            self.shutdown_request(request)
            return
        self.services.reaper.arm(request, self.services.config.request_timeout_seconds)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        self.services.reaper.forget(request)
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS failures (plain HTTP, scanners, clients that do not trust the CA) and resets.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TLSServer
    wbufsize = _CHUNK_BYTES  # headers and body leave in one write, one TLS record
    timeout = IDLE_SECONDS

    def setup(self) -> None:
        super().setup()
        self.request.do_handshake()

    def do_POST(self) -> None:
        services = self.server.services
        if self.path.split("?", 1)[0] != "/mutate":
            self._refuse(404, "not found")
            return
        services.reaper.arm(self.request, services.config.request_timeout_seconds)
        started = time.perf_counter()
        body = self._read_body(services.config)
        if body is None:
            return
        response, outcome = handle_review(body, config=services.config)
        self._send(200, "application/json", json.dumps(response, separators=(",", ":")).encode())
        services.metrics.requests.labels(outcome).inc()
        services.metrics.duration.observe(time.perf_counter() - started)
        if outcome in _LOGGED_OUTCOMES:
            answer = response["response"]
            log.info(
                "review %s: %s%s",
                answer.get("uid") or "(no uid)",
                outcome,
                f": {answer['status']['message']}" if "status" in answer else "",
            )

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/healthz", "/readyz"):
            self._send(200, "text/plain", b"ok\n")
        elif path == "/metrics":
            registry: CollectorRegistry = self.server.services.metrics.registry
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
        else:
            self._refuse(404, "not found")

    def _read_body(self, config: WebhookConfig) -> bytes | None:
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self._refuse(411, "Content-Length required")
            return None
        length = int(length_text)
        if length > config.max_request_bytes:
            self._refuse(413, f"body larger than {config.max_request_bytes} bytes")
            return None
        chunks: list[bytes] = []
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read1(min(remaining, _CHUNK_BYTES))
            if not chunk:  # the client went away or the reaper closed a slow request
                self.close_connection = True
                self.server.services.metrics.requests.labels("rejected").inc()
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _refuse(self, status: int, message: str) -> None:
        self.server.services.metrics.requests.labels("rejected").inc()
        self.close_connection = True  # an unread body would corrupt the next request
        self._send(status, "text/plain", f"{message}\n".encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.server.services.reaper.arm(self.request, IDLE_SECONDS)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class WebhookServer:
    """The HTTPS admission server, serving from background threads until ``stop``."""

    def __init__(
        self,
        *,
        config: WebhookConfig,
        certs: CertificateStore,
        metrics: WebhookMetrics,
        address: tuple[str, int],
    ) -> None:
        self._stopping = threading.Event()
        services = _Services(config=config, metrics=metrics, reaper=_Reaper())
        self._server = _TLSServer(address, certs=certs, services=services)
        self._threads = [
            threading.Thread(target=self._server.serve_forever, args=(0.1,), name="webhook", daemon=True),
            threading.Thread(target=services.reaper.run, args=(self._stopping,), name="reaper", daemon=True),
        ]

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Accept connections in the background."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop accepting, close the listening socket; open connections end with their requests."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all IPv4 interfaces) as a bind address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def run_webhook(
    *, config_path: Path, cert_path: Path, key_path: Path, listen: str, stop: threading.Event
) -> int:
    """Serve the webhook until ``stop`` is set; raises ``ConfigError`` on a bad config or cert."""
    try:
        config = load_webhook_config(Path(config_path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read webhook config {config_path}: {error}") from error
    metrics = WebhookMetrics(CollectorRegistry())
    certs = CertificateStore(
        Path(cert_path),
        Path(key_path),
        on_reload=lambda outcome: metrics.certificate_reloads.labels(outcome).inc(),
    )
    try:
        server = WebhookServer(config=config, certs=certs, metrics=metrics, address=parse_listen(listen))
    except OSError as error:
        raise ConfigError(f"cannot listen on {listen}: {error}") from error
    server.start()
    log.info(
        "webhook serving AdmissionReview v1 on https://%s/mutate (mode %s)", listen, config.modelcar_mode
    )
    stop.wait()
    log.info("webhook stopping")
    server.stop()
    return 0
