"""The webhook's HTTP application: routes, methods, body limits; ``handler`` does the deciding.

``server`` runs tornado's HTTP/1.1 server over TLS with this module's ``AdmissionApp`` as its
connection delegate: tornado parses each request and calls an ``_Exchange`` as its headers and
body arrive. What the application adds to the server's own limits (handshake, header size and
keep-alive deadlines):

- ``POST /mutate`` only: another method is 405 with ``Allow``; a body without ``Content-Length``
  (chunked) is 411, one over ``maxRequestBytes`` is 413, both decided on the headers, before a byte
  of body is read; the body must arrive within ``requestTimeoutSeconds`` of the headers (408 after
  that); the connection closes after any refusal, since an unread body would corrupt the next
  request;
- bodies held in memory at once are bounded (``body_budget_bytes``): a request waits for room,
  within its deadline, so concurrent maximum-size bodies cannot exhaust memory;
- a review body larger than ``LARGE_BODY_BYTES`` is decoded on one worker thread, one at a time:
  decoding JSON costs up to ~25 times the body's size (``[{},{},…]``), so two such decodes at
  once would double the peak; small reviews, nearly all of them, are decoded inline;
- ``drain`` (on stop) closes idle connections (no request, no byte waiting) at once, answers the
  requests in flight and closes each connection after its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import re
import select
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.iostream import IOStream, StreamClosedError

from prefetcher.webhook.config import WebhookConfig
from prefetcher.webhook.handler import Outcome, handle_review
from prefetcher.webhook.metrics import WebhookMetrics

log = logging.getLogger(__name__)
LARGE_BODY_BYTES = 256 * 1024
_LOGGED_OUTCOMES = frozenset({Outcome.MUTATED, Outcome.DENIED, Outcome.INVALID, Outcome.ERROR})
# RFC 9110 §8.6: one or more ASCII digits (int() alone would accept "١٢" and "1_0").
_DIGITS = re.compile(r"[0-9]{1,18}", re.ASCII)


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class _ByteBudget:
    """Bytes of request bodies held at once; ``acquire`` waits until there is room."""

    def __init__(self, total: int) -> None:
        self._free = total
        self._waiters: list[asyncio.Future[None]] = []

    def take(self, size: int) -> bool:
        """Hold ``size`` bytes if there is room now."""
        if self._free < size:
            return False
        self._free -= size
        return True

    async def acquire(self, size: int) -> None:
        while not self.take(size):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)

    def release(self, size: int) -> None:
        self._free += size
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class _Clock:
    """The ``Date`` header (RFC 9110 §6.6.1), formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def date(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second, self._text = second, httputil.format_timestamp(second)
        return self._text


class AdmissionApp(httputil.HTTPServerConnectionDelegate):
    """Serves ``/mutate``, ``/healthz``, ``/readyz`` and ``/metrics`` on tornado's connections."""

    def __init__(self, *, config: WebhookConfig, metrics: WebhookMetrics, body_budget_bytes: int) -> None:
        self.config = config
        self.metrics = metrics
        self.budget = _ByteBudget(max(body_budget_bytes, config.max_request_bytes))
        self.clock = _Clock()
        self.stopping = False
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-decoder")
        self._exchanges: dict[HTTP1ServerConnection, _Exchange] = {}
        self._settled = asyncio.Event()

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        exchange = _Exchange(self, cast(HTTP1Connection, request_conn))
        self._exchanges[cast(HTTP1ServerConnection, server_conn)] = exchange
        return exchange

    def forget(self, server_conn: HTTP1ServerConnection) -> None:
        """``server_conn`` has closed."""
        self._exchanges.pop(server_conn, None)
        self._settle()

    async def drain(self, seconds: float) -> None:
        """Close idle connections; answer the others' requests (for up to ``seconds``); close the rest.

        While stopping, every answer closes its connection, so the drain ends when none is left.
        """
        self.stopping = True
        for _ in range(3):  # requests whose headers were read but not yet handed over become busy
            await asyncio.sleep(0)
        for server_conn, exchange in list(self._exchanges.items()):
            if not exchange.busy and not _has_input(server_conn.stream):
                await server_conn.close()
        self._settle()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._settled.wait()
        for server_conn in list(self._exchanges):
            await server_conn.close()

    def decide(self, body: bytearray) -> tuple[dict[str, Any], Outcome]:
        """``handle_review`` of ``body``."""
        return handle_review(body, config=self.config)

    async def decide_large(self, body: bytearray) -> tuple[dict[str, Any], Outcome]:
        """``handle_review`` of a large ``body`` on the decoder thread, one at a time."""
        return await asyncio.get_running_loop().run_in_executor(self._decoder, self.decide, body)

    def close(self) -> None:
        """Stop the decoder thread (after the server has drained)."""
        self._decoder.shutdown(wait=True)

    def _settle(self) -> None:
        if self.stopping and not self._exchanges:
            self._settled.set()


class _Exchange(httputil.HTTPMessageDelegate):
    """One request on a connection, from its headers to the answer written."""

    def __init__(self, app: AdmissionApp, connection: HTTP1Connection) -> None:
        self._app = app
        self._connection = connection
        self._answer: Callable[[], None] | None = None
        self._body = bytearray()
        self._received = 0
        self._held = 0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._head = False
        self.busy = False
        self._started = 0.0

    async def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        request = cast(httputil.RequestStartLine, start_line)
        self.busy = True
        self._head = request.method == "HEAD"
        try:
            await self._route(request.method, request.path.partition("?")[0], headers)
        except _Refused as refused:
            await self._refuse(refused)

    def data_received(self, chunk: bytes) -> None:
        end = self._received + len(chunk)
        if self._answer is not None and end <= len(self._body):
            self._body[self._received : end] = chunk
        self._received = end

    def finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._answer is not None:
            self._answer()

    def on_connection_close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._release()
        self.busy = False

    async def _route(self, method: str, path: str, headers: httputil.HTTPHeaders) -> None:
        if path == "/mutate":
            _allow(method, ("POST",))
            await self._admit(headers)
        elif path in ("/healthz", "/readyz"):
            _allow(method, ("GET", "HEAD"))
            self._discard_body()
            self._answer = lambda: self._respond(200, "text/plain", b"ok\n")
        elif path == "/metrics":
            _allow(method, ("GET", "HEAD"))
            self._discard_body()
            self._answer = self._metrics
        else:
            raise _Refused(404, "not found")

    async def _admit(self, headers: httputil.HTTPHeaders) -> None:
        """Size the body from its headers, wait for room in the budget, arm the body's deadline."""
        length = _content_length(headers, self._app.config.max_request_bytes)
        self._started = time.perf_counter()
        timeout = self._app.config.request_timeout_seconds
        if not self._app.budget.take(length):
            try:
                async with asyncio.timeout(timeout):
                    await self._app.budget.acquire(length)
            except TimeoutError as error:
                raise _Refused(408, "request body not received in time") from error
        self._held = length
        self._body = bytearray(length)
        self._answer = self._review
        remaining = self._started + timeout - time.perf_counter()
        self._timer = asyncio.get_running_loop().call_later(remaining, self._expire)

    def _review(self) -> None:
        # tornado delivers exactly Content-Length bytes before calling finish().
        if len(self._body) > LARGE_BODY_BYTES:
            self._task = asyncio.ensure_future(self._decide_large())
            self._task.add_done_callback(self._decided)
            return
        try:
            decided = self._app.decide(self._body)
        finally:
            self._body = bytearray()
            self._release()
        self._answer_review(*decided)

    async def _decide_large(self) -> None:
        try:
            decided = await self._app.decide_large(self._body)
        finally:
            self._body = bytearray()
            self._release()
        self._answer_review(*decided)

    def _decided(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("review failed", exc_info=task.exception())
            self._connection.stream.close()

    def _answer_review(self, response: dict[str, Any], outcome: Outcome) -> None:
        self._respond(200, "application/json", json.dumps(response, separators=(",", ":")).encode())
        metrics = self._app.metrics
        metrics.requests.labels(outcome).inc()
        metrics.duration.observe(time.perf_counter() - self._started)
        if outcome in _LOGGED_OUTCOMES:
            answer = response["response"]
            message = answer["status"]["message"] if "status" in answer else ""
            log.info("review %s: %s %s", _quoted(answer.get("uid", "")), outcome, _quoted(message))

    def _discard_body(self) -> None:
        # A body these routes ignore still has to arrive in time (the server sets no deadline).
        self._connection.set_body_timeout(self._app.config.request_timeout_seconds)

    def _metrics(self) -> None:
        self._respond(200, CONTENT_TYPE_LATEST, generate_latest(self._app.metrics.registry))

    def _expire(self) -> None:
        self._answer = None
        self._release()
        self._reject(_Refused(408, "request body not received in time"))

    def _reject(self, refused: _Refused) -> None:
        """Answer ``refused`` while the body may still be arriving; the connection then closes."""
        self._app.metrics.requests.labels("rejected").inc()
        self._respond(refused.status, "text/plain", f"{refused}\n".encode(), refused.headers, close=True)

    async def _refuse(self, refused: _Refused) -> None:
        """Answer ``refused`` on the headers alone and close, reading no body."""
        self._app.metrics.requests.labels("rejected").inc()
        body = f"{refused}\n".encode()
        self._write(refused.status, "text/plain", body, refused.headers, close=True)
        stream = self._connection.detach()
        with contextlib.suppress(StreamClosedError):
            await stream.write(b"")  # resolves once everything written so far is flushed
        stream.close()

    def _respond(
        self,
        status: int,
        content_type: str,
        body: bytes,
        extra: tuple[tuple[str, str], ...] = (),
        *,
        close: bool = False,
    ) -> None:
        written = self._write(status, content_type, body, extra, close=close or self._app.stopping)
        self._connection.finish()
        if close or self._app.stopping:
            stream = self._connection.stream
            written.add_done_callback(lambda _done: stream.close())
        written.add_done_callback(self._done)

    def _write(
        self, status: int, content_type: str, body: bytes, extra: tuple[tuple[str, str], ...], *, close: bool
    ) -> asyncio.Future[None]:
        headers = httputil.HTTPHeaders()
        headers["Date"] = self._app.clock.date()
        headers["Content-Type"] = content_type
        headers["Content-Length"] = str(len(body))
        for name, value in extra:
            headers[name] = value
        if close:
            headers["Connection"] = "close"
        start = httputil.ResponseStartLine("HTTP/1.1", status, http.HTTPStatus(status).phrase)
        return self._connection.write_headers(start, headers, None if self._head else body)

    def _done(self, _written: asyncio.Future[None]) -> None:
        self.busy = False

    def _release(self) -> None:
        if self._held:
            self._app.budget.release(self._held)
            self._held = 0


def _has_input(stream: IOStream) -> bool:
    """Whether bytes (or an end of stream) wait on ``stream``'s socket: a request may be arriving."""
    sock = stream.socket
    if sock is None:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    # poll, not select: a flood of connections gives sockets numbers above select's 1024.
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _allow(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise _Refused(405, f"method {method} not allowed", (("Allow", ", ".join(allowed)),))


def _content_length(headers: httputil.HTTPHeaders, limit: int) -> int:
    """The declared body size; 411 without one, 413 over ``limit``, 400 if it is not a number."""
    if "Transfer-Encoding" in headers:
        if "Content-Length" in headers:
            raise _Refused(400, "both Transfer-Encoding and Content-Length")
        raise _Refused(411, "Content-Length required")
    values = headers.get_list("Content-Length")
    if not values:
        raise _Refused(411, "Content-Length required")
    if len(set(values)) != 1 or not _DIGITS.fullmatch(values[0]):
        raise _Refused(400, "Content-Length is not one decimal number")
    length = int(values[0])
    if length > limit:
        raise _Refused(413, f"body of {length} bytes is larger than {limit} bytes")
    return length


def _quoted(text: str) -> str:
    """``text`` as a JSON string: quotes, newlines and control characters escaped for one log line."""
    return json.dumps(text)
