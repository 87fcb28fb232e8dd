"""The webhook's HTTPS server; with ``tls`` the only modules of ``prefetcher.webhook`` doing I/O.

``app.AdmissionApp`` is served by hypercorn (asyncio, HTTP/1.1 over TLS only) rather than a
hand-rolled server: a connection costs a coroutine, not a thread or a slot, so clients that hold
connections open or dribble their headers cannot starve the API server's reviews. Limits:

- the TLS handshake must finish within ``requestTimeoutSeconds``; headers are at most 16 KiB;
- an idle keep-alive connection, and the headers of the next request on it, get ``IDLE_SECONDS``
  — longer than the API server's own idle timeout (90 s), so it is the client that closes idle
  connections and never a POST that races the server's close;
- body limits and deadlines are ``app``'s; the listen backlog is ``BACKLOG``;
- ``stop`` drains: the listener closes, idle connections close, reviews in flight are answered
  (for up to ``DRAIN_SECONDS``), then the loop ends. The Deployment's ``preStop`` delays SIGTERM
  until the endpoints no longer list the pod.

The certificate is reloaded when the files rotate (``tls.CertificateStore.listener_context``).
The config, metrics and certificate store are built and passed in by ``prefetcher.wiring.webhook``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from typing import cast

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.typing import ASGIFramework

from prefetcher.errors import ConfigError
from prefetcher.webhook.app import AdmissionApp
from prefetcher.webhook.config import WebhookConfig
from prefetcher.webhook.metrics import WebhookMetrics
from prefetcher.webhook.tls import CertificateStore

# Longer than the idle timeout of the API server's HTTP client (90 s), so the client, never this
# server, closes idle connections: a POST on a connection closed under it is not retried.
IDLE_SECONDS = 120.0
# The API server opens connections in bursts (one per concurrent review); a short queue drops
# SYNs and each drop costs the client a 1 s retransmit. The kernel caps it at net.core.somaxconn.
BACKLOG = 1024
# How long a stopping server waits for reviews in flight; the Deployment's grace period covers it.
DRAIN_SECONDS = 15.0
# Bodies held in memory at once, in units of maxRequestBytes (see app.py).
BODY_BUDGET_REQUESTS = 3


class _ServerConfig(HypercornConfig):
    """hypercorn's settings, with our listening socket and our certificate store."""

    def __init__(self, *, listener: socket.socket, certs: CertificateStore, config: WebhookConfig) -> None:
        self._listener = listener
        self._ssl_context = certs.listener_context()
        self.backlog = BACKLOG
        self.keep_alive_timeout = IDLE_SECONDS
        self.ssl_handshake_timeout = config.request_timeout_seconds
        self.graceful_timeout = DRAIN_SECONDS
        self.alpn_protocols = ["http/1.1"]
        self.include_server_header = False
        self.accesslog = None
        self.errorlog = logging.getLogger("prefetcher.webhook.hypercorn")

    @property
    def ssl_enabled(self) -> bool:
        return True

    def create_ssl_context(self) -> ssl.SSLContext:
        return self._ssl_context

    def create_sockets(self) -> Sockets:
        return Sockets(secure_sockets=[self._listener], insecure_sockets=[], quic_sockets=[])


def _listen(address: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says
    # TCP, and accepted sockets inherit the listener's proto. With Nagle on, the body of an answer
    # (written after its headers) waits for the client's delayed ACK: 40 ms per request.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(BACKLOG)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


class WebhookServer:
    """The HTTPS admission server, serving from a background event loop until ``stop``."""

    def __init__(
        self,
        *,
        config: WebhookConfig,
        certs: CertificateStore,
        metrics: WebhookMetrics,
        address: tuple[str, int],
    ) -> None:
        self._listener = _listen(address)
        self._port = int(self._listener.getsockname()[1])
        self._app = AdmissionApp(
            config=config,
            metrics=metrics,
            body_budget_bytes=BODY_BUDGET_REQUESTS * config.max_request_bytes,
        )
        self._settings = _ServerConfig(listener=self._listener, certs=certs, config=config)
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._port

    def start(self) -> None:
        """Accept connections in the background (the socket already queues them)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, answer the reviews in flight, then return."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()
        self._app.close()
        self._listener.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            app = cast(ASGIFramework, self._app)  # ASGI by protocol; hypercorn's types are nominal
            self._loop.run_until_complete(serve(app, self._settings, shutdown_trigger=self._stopping.wait))
        finally:
            self._loop.close()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all IPv4 interfaces) as a bind address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)
