"""The webhook's ASGI application: routes, methods, body limits; ``handler`` does the deciding.

Served by ``server`` (hypercorn over TLS). What it adds to the server's own limits (header size,
handshake and keep-alive deadlines):

- ``POST /mutate`` only: another method is 405 with ``Allow``; a body without ``Content-Length``
  (chunked) is 411, one over ``maxRequestBytes`` is 413, both before a byte of it is read; the
  body must arrive within ``requestTimeoutSeconds`` (408 after that) and the connection closes
  after any refusal, since an unread body would corrupt the next request;
- bodies held in memory at once are bounded (``body_budget_bytes``): a request waits for room,
  within its deadline, so concurrent maximum-size bodies cannot exhaust memory;
- a review body larger than ``LARGE_BODY_BYTES`` is decoded on one worker thread, one at a time:
  decoding JSON costs up to ~25 times the body's size (``[{},{},…]``), so two such decodes at
  once would double the peak; small reviews, nearly all of them, are decoded inline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from prefetcher.webhook.config import WebhookConfig
from prefetcher.webhook.handler import Outcome, handle_review
from prefetcher.webhook.metrics import WebhookMetrics

log = logging.getLogger(__name__)
LARGE_BODY_BYTES = 256 * 1024
_LOGGED_OUTCOMES = frozenset({Outcome.MUTATED, Outcome.DENIED, Outcome.INVALID, Outcome.ERROR})
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class _ByteBudget:
    """Bytes of request bodies held at once; ``acquire`` waits until there is room."""

    def __init__(self, total: int) -> None:
        self._free = total
        self._changed = asyncio.Condition()

    async def acquire(self, size: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._free >= size)
            self._free -= size

    async def release(self, size: int) -> None:
        async with self._changed:
            self._free += size
            self._changed.notify_all()


class AdmissionApp:
    """ASGI application serving ``/mutate``, ``/healthz``, ``/readyz`` and ``/metrics``."""

    def __init__(self, *, config: WebhookConfig, metrics: WebhookMetrics, body_budget_bytes: int) -> None:
        self._config = config
        self._metrics = metrics
        self._budget = _ByteBudget(max(body_budget_bytes, config.max_request_bytes))
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-decoder")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            try:
                await self._route(scope, receive, send)
            except _Refused as refused:
                self._metrics.requests.labels("rejected").inc()
                body = f"{refused}\n".encode()
                await _respond(send, refused.status, "text/plain", body, extra=refused.headers, close=True)

    def close(self) -> None:
        """Stop the decoder thread (after the server has drained)."""
        self._decoder.shutdown(wait=True)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/mutate":
            _allow(method, ("POST",))
            await self._mutate(scope, receive, send)
        elif path in ("/healthz", "/readyz"):
            _allow(method, ("GET", "HEAD"))
            await _respond(send, 200, "text/plain", b"ok\n")
        elif path == "/metrics":
            _allow(method, ("GET", "HEAD"))
            await _respond(send, 200, CONTENT_TYPE_LATEST, generate_latest(self._metrics.registry))
        else:
            raise _Refused(404, "not found")

    async def _mutate(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = _content_length(scope, self._config.max_request_bytes)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._config.request_timeout_seconds):
                await self._budget.acquire(length)
                try:
                    body = await _read_body(receive, length)
                except BaseException:
                    await self._budget.release(length)
                    raise
        except TimeoutError as error:
            raise _Refused(408, "request body not received in time") from error
        try:
            if length > LARGE_BODY_BYTES:
                loop = asyncio.get_running_loop()
                decided = await loop.run_in_executor(self._decoder, self._decide, body)
            else:
                decided = self._decide(body)
        finally:
            await self._budget.release(length)
        response, outcome = decided
        await _respond(send, 200, "application/json", json.dumps(response, separators=(",", ":")).encode())
        self._metrics.requests.labels(outcome).inc()
        self._metrics.duration.observe(time.perf_counter() - started)
        if outcome in _LOGGED_OUTCOMES:
            answer = response["response"]
            message = answer["status"]["message"] if "status" in answer else ""
            log.info("review %s: %s %s", _quoted(answer.get("uid", "")), outcome, _quoted(message))

    def _decide(self, body: bytes | bytearray) -> tuple[dict[str, Any], Outcome]:
        return handle_review(body, config=self._config)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def _allow(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        listed = ", ".join(allowed)
        raise _Refused(405, f"method {method} not allowed", ((b"allow", listed.encode()),))


def _content_length(scope: Scope, limit: int) -> int:
    """The declared body size (the server has checked its syntax); 411 without one, 413 over ``limit``."""
    values = [value for name, value in scope["headers"] if name.lower() == b"content-length"]
    if not values:
        raise _Refused(411, "Content-Length required")
    length = int(values[0])
    if length > limit:
        raise _Refused(413, f"body of {length} bytes is larger than {limit} bytes")
    return length


async def _read_body(receive: Receive, length: int) -> bytearray:
    """Exactly ``length`` bytes of body, written into one buffer of that size."""
    body = bytearray(length)
    view = memoryview(body)
    received = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refused(400, "client went away")
        chunk = message.get("body", b"")
        if received + len(chunk) > length:
            raise _Refused(400, "body longer than its Content-Length")
        view[received : received + len(chunk)] = chunk
        received += len(chunk)
        more = bool(message.get("more_body", False))
    if received != length:
        raise _Refused(400, "body shorter than its Content-Length")
    return body


async def _respond(
    send: Send,
    status: int,
    content_type: str,
    body: bytes,
    *,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    close: bool = False,
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    headers += extra
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _quoted(text: str) -> str:
    """``text`` as a JSON string: quotes, newlines and control characters escaped for one log line."""
    return json.dumps(text)
