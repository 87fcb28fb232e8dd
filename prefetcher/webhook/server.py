"""The webhook's HTTPS server; with ``tls`` the only modules of ``prefetcher.webhook`` doing I/O.

tornado's HTTP/1.1 server (on asyncio, TLS by the ``ssl`` module) serves ``app.AdmissionApp``
rather than a hand-rolled server: a connection costs a coroutine, not a thread or a slot, so
clients that hold connections open or dribble their headers cannot starve the API server's
reviews, and its parser is a small part of each review's CPU. Limits:

- the TLS handshake must finish within ``requestTimeoutSeconds``; headers are at most
  ``MAX_HEADER_BYTES``;
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
import socket
import threading
from typing import Any, cast

from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, SSLIOStream

from prefetcher.core.address import parse_host_port
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
# A request line and headers; the API server sends well under 1 KiB.
MAX_HEADER_BYTES = 16 * 1024


class _Server(HTTPServer):
    """tornado's server with a TLS handshake deadline, telling the application of closed connections."""

    app: AdmissionApp
    handshake_seconds: float

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        handshake = stream.wait_for_handshake() if isinstance(stream, SSLIOStream) else None
        if handshake is not None:
            # Before the first request the header deadline (IDLE_SECONDS) would also cover it.
            timer = asyncio.get_running_loop().call_later(self.handshake_seconds, stream.close)

            def handshaken(done: asyncio.Future[SSLIOStream]) -> None:
                timer.cancel()
                done.exception()  # a failed handshake has closed the stream; nothing to report

            handshake.add_done_callback(handshaken)
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        self.app.forget(cast(HTTP1ServerConnection, server_conn))


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
        self._config = config
        self._metrics = metrics
        self._ssl_context = certs.listener_context()
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        self._app: AdmissionApp | None = None
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
        self._listener.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        app = AdmissionApp(
            config=self._config,
            metrics=self._metrics,
            body_budget_bytes=BODY_BUDGET_REQUESTS * self._config.max_request_bytes,
        )
        server = _Server(
            app,
            ssl_options=self._ssl_context,
            idle_connection_timeout=IDLE_SECONDS,
            # No body deadline here: the application arms its own per route (408 on /mutate).
            body_timeout=None,
            max_header_size=MAX_HEADER_BYTES,
            max_body_size=self._config.max_request_bytes,
        )
        server.app, server.handshake_seconds = app, self._config.request_timeout_seconds
        server.add_sockets([self._listener])
        try:
            await self._stopping.wait()
        finally:
            server.stop()
            await app.drain(DRAIN_SECONDS)
            app.close()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all IPv4 interfaces) as a bind address."""
    try:
        return parse_host_port(text)
    except ValueError as error:
        raise ConfigError(f"listen address {text!r} is not HOST:PORT") from error
