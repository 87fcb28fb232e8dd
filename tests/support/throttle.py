"""Test support: a TCP proxy on loopback whose downstream bandwidth is capped, shared by all clients.

A registry on loopback answers at memory speed, so a cold pull measured against it is the best
case for cold. ``ThrottledProxy`` stands between the nodes and the registry and sends the
registry's answers on at ``rate_bytes_per_second`` in all, as a remote registry behind a link of
that speed would; requests go upstream unthrottled. It is a plain byte pipe (HTTP is not parsed),
so containerd talks to it exactly as to the registry: name the proxy's ``host`` in image
references and in containerd's mirror configuration.

The cap is a token bucket refilled continuously and shared by every connection, with a burst of a
twentieth of a second's worth; one event loop in a daemon thread does all the copying.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

CHUNK_BYTES = 64 * 1024
BURST_SECONDS = 0.05
START_TIMEOUT_SECONDS = 10.0


class _Bucket:
    """Tokens are bytes; ``take`` waits until ``n`` may be sent."""

    def __init__(self, rate: float) -> None:
        self.rate, self.capacity = rate, max(rate * BURST_SECONDS, CHUNK_BYTES)
        self.tokens, self.stamp = self.capacity, time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


@dataclass(frozen=True)
class ThrottledProxy:
    """``host`` (127.0.0.1:port) forwards to ``upstream`` with answers capped at ``rate``."""

    host: str
    upstream: str
    rate_bytes_per_second: float


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bucket: _Bucket | None) -> None:
    try:
        while data := await reader.read(CHUNK_BYTES):
            if bucket is not None:
                await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _serve(upstream: tuple[str, int], rate: float, ready: threading.Event, box: dict[str, object]) -> None:
    async def main() -> None:
        bucket = _Bucket(rate)

        async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            try:
                up_r, up_w = await asyncio.open_connection(*upstream)
            except OSError:
                client_w.close()
                return
            await asyncio.gather(_pump(client_r, up_w, None), _pump(up_r, client_w, bucket))

        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=128)
        box["port"] = server.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        box["stop"] = (asyncio.get_running_loop(), stop)
        ready.set()
        async with server:
            await stop.wait()

    asyncio.run(main())


@contextlib.contextmanager
def throttled_proxy(upstream: str, rate_bytes_per_second: float) -> Iterator[ThrottledProxy]:
    """Run the proxy in front of ``upstream`` (``host:port``) inside the block."""
    host, _, port = upstream.rpartition(":")
    ready, box = threading.Event(), {}
    args = ((host, int(port)), rate_bytes_per_second, ready, box)
    thread = threading.Thread(target=_serve, args=args, name="throttled-proxy", daemon=True)
    thread.start()
    if not ready.wait(START_TIMEOUT_SECONDS):
        raise RuntimeError("the throttled proxy did not start")
    try:
        yield ThrottledProxy(f"127.0.0.1:{box['port']}", upstream, rate_bytes_per_second)
    finally:
        loop, stop = box["stop"]  # type: ignore[misc]
        loop.call_soon_threadsafe(stop.set)
        thread.join(START_TIMEOUT_SECONDS)
