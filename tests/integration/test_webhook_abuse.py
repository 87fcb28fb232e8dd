"""``prefetcher webhook`` as a process, with the shipped config, under hostile in-cluster clients.

The webhook fails closed: while it does not answer, no modelcar pod can be created. Any pod can
reach its Service and anyone who can create a labelled pod controls the review's size, so each
test here attacks the real process over TLS the way such a client could: connections held open,
dribbled headers, maximum-size bodies, malformed framing, forged log lines, and a rollout
(SIGTERM) in the middle of a review. Memory is the kernel's own high-water mark of the process
(VmHWM), held against the memory limit of the shipped Deployment.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.polling import eventually
from tests.support.registry import free_port
from tests.support.webhook import REPO, WEBHOOK_CONFIG_FILE, until_closed
from tests.support.webhook_server import PINNED, WebhookCA, pod_review

pytestmark = pytest.mark.integration

DEPLOYMENT = REPO / "deploy" / "webhook" / "base" / "deployment.yaml"
DEADLINE_SECONDS = 30.0
_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def memory_limit_bytes() -> int:
    """The webhook container's memory limit in the shipped Deployment."""
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    limit = str(deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
    return int(limit[:-2]) * _UNITS[limit[-2:]]


@dataclass
class Running:
    """The webhook process on ``port``; ``cap`` is its ``maxRequestBytes``."""

    proc: subprocess.Popen[bytes]
    port: int
    ca: WebhookCA
    log: Path
    cap: int

    def tls(self, timeout: float = DEADLINE_SECONDS) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return self.ca.client_context().wrap_socket(raw, server_hostname="127.0.0.1")

    def https(self) -> http.client.HTTPSConnection:
        context = self.ca.client_context()
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=DEADLINE_SECONDS)

    def review(self, uid: str) -> tuple[int, dict[str, Any]]:
        conn = self.https()
        try:
            return post(conn, json.dumps(pod_review(uid)).encode())
        finally:
            conn.close()

    def started(self) -> bool:
        """Healthy, or exited (a port taken by another process between pick and bind)."""
        return self.proc.poll() is not None or self.healthy()

    def healthy(self) -> bool:
        conn = self.https()
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            return response.status == 200 and response.read() == b"ok\n"
        except OSError:
            return False
        finally:
            conn.close()

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/PID/status")


def post(conn: http.client.HTTPSConnection, body: bytes) -> tuple[int, dict[str, Any]]:
    conn.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    return response.status, json.loads(data) if response.status == 200 else {"text": data.decode()}


@contextlib.contextmanager
def running_webhook(directory: Path) -> Iterator[Running]:
    """``python -m prefetcher webhook`` with the shipped config on a free loopback port."""
    ca = WebhookCA()
    ca.issue(directory / "tls.crt", directory / "tls.key")
    cap = int(yaml.safe_load(WEBHOOK_CONFIG_FILE.read_text())["maxRequestBytes"])
    log = directory / "webhook.log"
    for _attempt in range(3):
        port = free_port()
        argv = [sys.executable, "-m", "prefetcher", "webhook", f"--config={WEBHOOK_CONFIG_FILE}"]
        argv += [f"--cert={directory / 'tls.crt'}", f"--key={directory / 'tls.key'}"]
        argv += [f"--listen=127.0.0.1:{port}"]
        with log.open("ab") as out:
            # setpriv: the child dies with this process should the test die without teardown.
            proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *argv], stdout=out, stderr=out)
        running = Running(proc, port, ca, log, cap)
        try:
            eventually(running.started, what="a healthy /healthz")
        except AssertionError:
            proc.kill()
            proc.wait()
            raise
        if proc.poll() is None:
            break
    else:
        raise AssertionError(f"the webhook did not start:\n{log.read_text()}")
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[Running]:
    with running_webhook(tmp_path) as running:
        yield running


def test_reviews_and_probes_are_answered_while_300_clients_hold_connections(webhook: Running) -> None:
    holders: list[Any] = []
    try:
        # Each holder had one review answered, then dribbles the headers of the next request.
        for index in range(300):
            conn = webhook.https()
            status, _ = post(conn, json.dumps(pod_review(f"holder-{index}")).encode())
            assert status == 200
            assert conn.sock is not None
            conn.sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-")
            holders.append(conn)
        # And some never even finish their TLS handshake.
        holders += [socket.create_connection(("127.0.0.1", webhook.port)) for _ in range(50)]
        answered = [webhook.review(f"fresh-{index}") for index in range(20)]
        assert [(status, review["response"]["uid"]) for status, review in answered] == [
            (200, f"fresh-{index}") for index in range(20)
        ]
        assert all(webhook.healthy() for _ in range(10))
    finally:
        for holder in holders:
            holder.close()


def test_framing_errors_get_a_status_line_and_unknown_methods_405(webhook: Running) -> None:
    def exchange(request: bytes) -> bytes:
        with webhook.tls() as tls:
            tls.sendall(request)
            return until_closed(tls)

    too_big = exchange(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (webhook.cap + 1))
    assert too_big.startswith(b"HTTP/1.1 413")  # refused on its headers, no body byte read
    chunked = b"POST /mutate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert exchange(chunked).startswith(b"HTTP/1.1 411")
    arabic_digits = "Content-Length: \u0661\u0662\r\n".encode()
    assert exchange(b"POST /mutate HTTP/1.1\r\nHost: x\r\n" + arabic_digits + b"\r\n").startswith(
        b"HTTP/1.1 400"
    )
    for method in (b"PUT", b"DELETE", b"HEAD", b"GET"):
        answer = exchange(method + b" /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 405"), answer[:40]
        assert b"\r\nallow: post\r\n" in answer.lower()
    conn = webhook.https()
    try:
        conn.request("HEAD", "/healthz")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"")
    finally:
        conn.close()


def test_concurrent_maximum_size_bodies_stay_under_the_memory_limit(webhook: Running) -> None:
    # The most expensive JSON per byte to decode: ~25 bytes of Python objects per byte of body.
    count = (webhook.cap - 2) // 3
    body = b"[" + b"{}," * (count - 1) + b"{}]"
    body += b" " * (webhook.cap - len(body))
    assert len(body) == webhook.cap

    def send(_index: int) -> tuple[int, Any]:
        conn = webhook.https()
        try:
            status, review = post(conn, body)
            return status, review["response"]["status"]["code"]
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, range(8)))
    assert answers == [(200, 400)] * 8  # each decoded and refused as "not an AdmissionReview"
    assert webhook.review("after")[0] == 200
    peak, limit = webhook.peak_rss_bytes(), memory_limit_bytes()
    print(f"peak RSS {peak / 2**20:.0f} MiB, limit {limit / 2**20:.0f} MiB")
    assert peak < limit


def test_the_listen_backlog_holds_a_burst_of_connections(webhook: Running) -> None:
    # While the process is stopped nothing is accepted: only the kernel's queue completes
    # handshakes, as many as the backlog given to listen().
    sockets = []
    os.kill(webhook.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(200):
            sock = socket.socket()
            sock.setblocking(False)
            assert sock.connect_ex(("127.0.0.1", webhook.port)) in (0, errno.EINPROGRESS)
            sockets.append(sock)

        def all_connected() -> bool:
            _, writable, _ = select.select([], sockets, [], 0.1)
            return len(writable) == len(sockets)

        eventually(all_connected, what="200 connections completed by the kernel", timeout_seconds=10)
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in sockets)
    finally:
        os.kill(webhook.proc.pid, signal.SIGCONT)
        for sock in sockets:
            sock.close()
    assert webhook.healthy()


def test_sigterm_answers_the_review_in_flight_then_exits(webhook: Running) -> None:
    body = json.dumps(pod_review("in-flight")).encode()
    with webhook.tls() as tls:
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        tls.sendall(body[:10])
        webhook.proc.send_signal(signal.SIGTERM)
        eventually(
            lambda: "webhook stopping" in webhook.log.read_text(), what="the webhook to start stopping"
        )

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", webhook.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        eventually(refused, what="the listener to close")
        tls.sendall(body[10:])
        answer = until_closed(tls)
    assert answer.startswith(b"HTTP/1.1 200")
    review = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert review["response"]["uid"] == "in-flight" and review["response"]["allowed"] is True
    assert webhook.proc.wait(timeout=DEADLINE_SECONDS) == 0


def test_a_uid_cannot_forge_a_log_line(webhook: Running) -> None:
    document = pod_review("x\nreview forged: mutated", annotations={"internal.serving.kserve.io/x": PINNED})
    document["request"]["object"]["metadata"]["annotations"] = {
        "internal.serving.kserve.io/storage-initializer-sourceuri": "oci://NOT VALID\nreview forged-2"
    }
    conn = webhook.https()
    try:
        status, review = post(conn, json.dumps(document).encode())
    finally:
        conn.close()
    assert status == 200 and review["response"]["allowed"] is False
    eventually(lambda: "denied" in webhook.log.read_text(), what="the denial to be logged")
    lines = webhook.log.read_text().splitlines()
    assert not [line for line in lines if line.startswith("review forged")]
    assert any('review "x\\nreview forged: mutated": denied' in line for line in lines), lines
