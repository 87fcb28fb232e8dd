"""The webhook's real HTTPS server on loopback: TLS only, rotation, concurrency, bounds, metrics.

``WebhookCA`` is also used by the API-server test to register this server with a ``caBundle``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import http.client
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from prefetcher.errors import ConfigError
from prefetcher.webhook.config import WebhookConfig
from prefetcher.webhook.metrics import WebhookMetrics
from prefetcher.webhook.server import WebhookServer, parse_listen
from prefetcher.webhook.tls import CertificateStore, certificate_not_after
from prefetcher.wiring.webhook import run_webhook
from tests.support.admission import admission_review
from tests.support.pki import certificate_builder
from tests.support.webhook import until_closed

pytestmark = pytest.mark.integration

KSERVE = "internal.serving.kserve.io/storage-initializer-sourceuri"
PINNED = "oci://quay.io/acme/llama@sha256:" + "1" * 64
DEADLINE_SECONDS = 10.0


class WebhookCA:
    """A throwaway CA issuing serving certificates for loopback names."""

    def __init__(self, name: str = "webhook-test-ca") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            certificate_builder(subject, subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cert_path: Path, key_path: Path, *, names: tuple[str, ...] = ("localhost",)) -> None:
        """Write a serving certificate for 127.0.0.1 and ``names`` and its key."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        sans += [x509.DNSName(name) for name in names]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        cert = (
            certificate_builder(subject, self.cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_atomically(key_path, key_pem)
        _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM))

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.pem.decode())


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def pod_review(uid: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """An AdmissionReview of a KServe predictor pod CREATE."""
    pod = {
        "metadata": {"annotations": {KSERVE: PINNED} if annotations is None else annotations},
        "spec": {"containers": [{"name": "kserve-container", "image": "runtime:1"}]},
    }
    return admission_review(pod, uid=uid)


@dataclass
class Served:
    """A running webhook server and what a client needs to reach it."""

    server: WebhookServer
    ca: WebhookCA
    cert: Path
    key: Path
    registry: CollectorRegistry

    def connect(self, context: ssl.SSLContext | None = None) -> http.client.HTTPSConnection:
        context = context or self.ca.client_context()
        return http.client.HTTPSConnection("127.0.0.1", self.server.port, context=context, timeout=10)

    def post(self, conn: http.client.HTTPSConnection, document: Any) -> tuple[int, Any]:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        conn.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if response.status == 200 else data

    def samples(
        self, context: ssl.SSLContext | None = None
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        conn = self.connect(context)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def start_server(directory: Path, config: WebhookConfig) -> Served:
    ca = WebhookCA()
    cert, key = directory / "tls.crt", directory / "tls.key"
    ca.issue(cert, key)
    registry = CollectorRegistry()
    metrics = WebhookMetrics(registry)
    store = CertificateStore(
        cert, key, on_reload=lambda outcome: metrics.certificate_reloads.labels(outcome).inc()
    )
    server = WebhookServer(config=config, certs=store, metrics=metrics, address=("127.0.0.1", 0))
    server.start()
    return Served(server=server, ca=ca, cert=cert, key=key, registry=registry)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    config = dataclasses.replace(WebhookConfig(), request_timeout_seconds=1.0, max_request_bytes=64 * 1024)
    running = start_server(tmp_path, config)
    yield running
    running.server.stop()


def poll(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)


def test_reviews_are_answered_over_one_kept_alive_connection(served: Served) -> None:
    conn = served.connect()
    try:
        for index in range(5):
            status, review = served.post(conn, pod_review(f"uid-{index}"))
            assert status == 200
            response = review["response"]
            assert response["uid"] == f"uid-{index}" and response["allowed"] is True
            ops = json.loads(base64.b64decode(response["patch"]))
            assert {"op": "add", "path": "/spec/shareProcessNamespace", "value": True} in ops
        sockname = conn.sock.getsockname()
        served.post(conn, pod_review("again"))
        assert conn.sock.getsockname() == sockname  # the same TCP connection
    finally:
        conn.close()


def test_answers_are_sent_without_waiting_for_acks(served: Served) -> None:
    # The answer's headers and body leave in two writes; with Nagle's algorithm on, the second
    # waits for the client's delayed ACK (40 ms on Linux) and 8 connections top out near 200/s.
    conn = served.connect()
    try:
        assert served.post(conn, pod_review("nodelay"))[0] == 200
        accepted = _server_side(conn.sock)
        try:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            accepted.close()
    finally:
        conn.close()


def _server_side(client: socket.socket) -> socket.socket:
    """A duplicate of this process's socket at the other end of ``client`` (the server is in-process)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:  # closed since the listing
            continue
        try:
            candidate = socket.socket(fileno=fd)
        except OSError:  # not a socket
            os.close(fd)
            continue
        with contextlib.suppress(OSError):  # unconnected sockets have no peer
            ends = (candidate.getsockname(), candidate.getpeername())
            if ends == (client.getpeername(), client.getsockname()):
                return candidate
        candidate.close()
    raise AssertionError("no socket of this process is the server's end of the connection")


def test_health_and_unknown_paths(served: Served) -> None:
    conn = served.connect()
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
        conn.request("GET", "/nothing")
        response = conn.getresponse()
        assert response.status == 404
        response.read()
    finally:
        conn.close()


def test_plain_http_is_refused(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.server.port), timeout=5) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = raw.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/")


def test_a_client_that_does_not_trust_the_ca_cannot_connect(served: Served) -> None:
    conn = served.connect(WebhookCA("stranger").client_context())
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            conn.request("GET", "/healthz")
    finally:
        conn.close()


def _serves_with(served: Served, ca: WebhookCA) -> bool:
    conn = served.connect(ca.client_context())
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except ssl.SSLError:
        return False
    finally:
        conn.close()


def test_rotated_certificate_is_picked_up_by_new_connections(served: Served) -> None:
    kept = served.connect()
    served.post(kept, pod_review("before"))
    rotated = WebhookCA("rotated-ca")
    rotated.issue(served.cert, served.key)
    poll(lambda: _serves_with(served, rotated), "the rotated certificate")
    assert not _serves_with(served, served.ca)
    status, _ = served.post(kept, pod_review("kept-alive"))  # open connections carry on
    kept.close()
    assert status == 200
    samples = served.samples(rotated.client_context())
    assert samples[("prefetcher_webhook_certificate_reloads_total", (("outcome", "ok"),))] == 1


def test_a_half_written_rotation_keeps_the_previous_certificate(served: Served) -> None:
    served.cert.write_bytes(WebhookCA("other").pem)  # a certificate that does not match the key
    poll(lambda: _serves_with(served, served.ca), "service with the previous certificate")
    assert served.samples()[("prefetcher_webhook_certificate_reloads_total", (("outcome", "error"),))] == 1
    served.ca.issue(served.cert, served.key)  # the rotation completes
    poll(
        lambda: (
            served.samples().get(("prefetcher_webhook_certificate_reloads_total", (("outcome", "ok"),))) == 1
        ),
        "reload",
    )


def test_secret_volume_symlink_swap_is_picked_up(tmp_path: Path) -> None:
    # kubelet updates a Secret volume by re-pointing the ..data symlink at a new directory.
    first, second = tmp_path / "..2024_1", tmp_path / "..2024_2"
    first.mkdir()
    second.mkdir()
    old_ca, new_ca = WebhookCA("old"), WebhookCA("new")
    old_ca.issue(first / "tls.crt", first / "tls.key")
    new_ca.issue(second / "tls.crt", second / "tls.key")
    (tmp_path / "..data").symlink_to(first.name)
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    metrics = WebhookMetrics(CollectorRegistry())
    store = CertificateStore(tmp_path / "tls.crt", tmp_path / "tls.key", on_reload=lambda _outcome: None)
    server = WebhookServer(config=WebhookConfig(), certs=store, metrics=metrics, address=("127.0.0.1", 0))
    server.start()
    try:
        served = Served(server, old_ca, tmp_path / "tls.crt", tmp_path / "tls.key", metrics.registry)
        assert _serves_with(served, old_ca)
        (tmp_path / "..data_tmp").symlink_to(second.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        poll(lambda: _serves_with(served, new_ca), "the swapped certificate")
    finally:
        server.stop()


def test_concurrent_requests(served: Served) -> None:
    def client(worker: int) -> list[bool]:
        conn = served.connect()
        try:
            results = []
            for index in range(10):
                status, review = served.post(conn, pod_review(f"{worker}-{index}"))
                results.append(status == 200 and review["response"]["uid"] == f"{worker}-{index}")
            return results
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=32) as pool:
        outcomes = [ok for results in pool.map(client, range(32)) for ok in results]
    assert outcomes == [True] * 320
    assert served.samples()[("prefetcher_webhook_requests_total", (("outcome", "mutated"),))] == 320


def test_metrics_count_outcomes_and_latency(served: Served) -> None:
    conn = served.connect()
    try:
        served.post(conn, pod_review("m"))
        served.post(conn, pod_review("u", annotations={}))
        served.post(conn, pod_review("d", annotations={KSERVE: "oci://NOT VALID"}))
        served.post(conn, b"{not json")
        served.post(conn, b"[]")
    finally:
        conn.close()
    samples = served.samples()
    counts = {
        labels[0][1]: value
        for (name, labels), value in samples.items()
        if name == "prefetcher_webhook_requests_total"
    }
    assert counts == {"mutated": 1, "unchanged": 1, "denied": 1, "invalid": 2}
    assert samples[("prefetcher_webhook_request_duration_seconds_count", ())] == 5


@contextlib.contextmanager
def _tls_socket(served: Served) -> Iterator[ssl.SSLSocket]:
    raw = socket.create_connection(("127.0.0.1", served.server.port), timeout=DEADLINE_SECONDS)
    with served.ca.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        yield tls


def test_oversized_and_unsized_bodies_are_refused(served: Served) -> None:
    # Only the headers are sent: the server refuses on Content-Length before reading a body, and
    # closes, so a client still writing the body would race that close.
    with _tls_socket(served) as tls:
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (64 * 1024 + 1))
        assert tls.recv(4096).startswith(b"HTTP/1.1 413")
    with _tls_socket(served) as tls:
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert tls.recv(4096).startswith(b"HTTP/1.1 411")
    assert served.samples()[("prefetcher_webhook_requests_total", (("outcome", "rejected"),))] == 2


def test_a_slow_request_is_cut_off_at_its_deadline(served: Served) -> None:
    with _tls_socket(served) as tls:
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        tls.settimeout(DEADLINE_SECONDS)
        answer = until_closed(tls)
    assert answer.startswith(b"HTTP/1.1 408")
    assert answer.endswith(b"request body not received in time\n")  # and then the server closed


def test_listen_addresses() -> None:
    assert parse_listen(":8443") == ("0.0.0.0", 8443)
    assert parse_listen("127.0.0.1:9443") == ("127.0.0.1", 9443)
    assert parse_listen("[::1]:9443") == ("::1", 9443)
    with pytest.raises(ConfigError):
        parse_listen("8443")


def test_run_webhook_serves_until_stopped(tmp_path: Path) -> None:
    ca = WebhookCA()
    ca.issue(tmp_path / "tls.crt", tmp_path / "tls.key")
    (tmp_path / "webhook.yaml").write_text("tagPolicy: deny\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            run_webhook(
                config_path=tmp_path / "webhook.yaml",
                cert_path=tmp_path / "tls.crt",
                key_path=tmp_path / "tls.key",
                listen=f"127.0.0.1:{port}",
                stop=stop,
            )
        )
    )
    thread.start()
    try:

        def denied() -> bool:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ca.client_context(), timeout=5)
            try:
                body = json.dumps(pod_review("t", {KSERVE: "oci://quay.io/a/b:1"}))
                conn.request("POST", "/mutate", body=body)
                return json.loads(conn.getresponse().read())["response"]["allowed"] is False
            except ConnectionRefusedError:
                return False
            finally:
                conn.close()

        poll(denied, "the webhook to deny a tag under tagPolicy: deny")
    finally:
        stop.set()
        thread.join(DEADLINE_SECONDS)
    assert result == [0]


def test_run_webhook_reports_bad_files(tmp_path: Path) -> None:
    (tmp_path / "webhook.yaml").write_text("tagPolicy: maybe\n")
    kwargs: dict[str, Any] = {
        "cert_path": tmp_path / "none.crt",
        "key_path": tmp_path / "none.key",
        "listen": "127.0.0.1:0",
        "stop": threading.Event(),
    }
    with pytest.raises(ConfigError, match="tagPolicy"):
        run_webhook(config_path=tmp_path / "webhook.yaml", **kwargs)
    (tmp_path / "webhook.yaml").write_text("")
    with pytest.raises(ConfigError, match="cannot load certificate"):
        run_webhook(config_path=tmp_path / "webhook.yaml", **kwargs)


def test_the_expiry_gauge_follows_the_certificate_in_service(tmp_path: Path) -> None:
    ca = WebhookCA()
    ca.issue(tmp_path / "tls.crt", tmp_path / "tls.key")
    expiries: list[float] = []
    store = CertificateStore(
        tmp_path / "tls.crt", tmp_path / "tls.key", on_reload=lambda _o: None, on_expiry=expiries.append
    )
    first = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    assert expiries == [first.not_valid_after_utc.timestamp()]
    # A UTCTime before 2050 and a GeneralizedTime after it (RFC 5280 4.1.2.5) both read right.
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "late")])
    late = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2061, 5, 4, 3, 2, 1, tzinfo=datetime.UTC))
        .sign(key, hashes.SHA256())
    )
    late_pem = late.public_bytes(serialization.Encoding.PEM)
    assert certificate_not_after(late_pem) == late.not_valid_after_utc.timestamp()
    ca.issue(tmp_path / "tls.crt", tmp_path / "tls.key")
    store.context()
    assert len(expiries) == 2
