"""The webhook's real HTTPS server on loopback: TLS only, rotation, concurrency, bounds, metrics."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import http.client
import json
import os
import resource
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from prefetcher.errors import ConfigError
from prefetcher.webhook.config import WebhookConfig
from prefetcher.webhook.metrics import WebhookMetrics
from prefetcher.webhook.server import WebhookServer, parse_listen
from prefetcher.webhook.tls import CertificateStore, certificate_not_after
from prefetcher.wiring.webhook import run_webhook
from tests.support.polling import eventually
from tests.support.webhook import until_closed
from tests.support.webhook_server import KSERVE, Served, WebhookCA, pod_review, start_server

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 10.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    config = dataclasses.replace(WebhookConfig(), request_timeout_seconds=1.0, max_request_bytes=64 * 1024)
    running = start_server(tmp_path, config)
    yield running
    running.server.stop()


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
    eventually(lambda: _serves_with(served, rotated), what="the rotated certificate")
    assert not _serves_with(served, served.ca)
    status, _ = served.post(kept, pod_review("kept-alive"))  # open connections carry on
    kept.close()
    assert status == 200
    samples = served.samples(rotated.client_context())
    assert samples[("prefetcher_webhook_certificate_reloads_total", (("outcome", "ok"),))] == 1


def test_a_half_written_rotation_keeps_the_previous_certificate(served: Served) -> None:
    served.cert.write_bytes(WebhookCA("other").pem)  # a certificate that does not match the key
    eventually(lambda: _serves_with(served, served.ca), what="service with the previous certificate")
    assert served.samples()[("prefetcher_webhook_certificate_reloads_total", (("outcome", "error"),))] == 1
    served.ca.issue(served.cert, served.key)  # the rotation completes
    eventually(
        lambda: (
            served.samples().get(("prefetcher_webhook_certificate_reloads_total", (("outcome", "ok"),))) == 1
        ),
        what="reload",
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
        eventually(lambda: _serves_with(served, new_ca), what="the swapped certificate")
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

        eventually(denied, what="the webhook to deny a tag under tagPolicy: deny")
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


def test_a_client_that_never_finishes_its_handshake_is_closed_at_the_deadline(served: Served) -> None:
    # The served fixture's requestTimeoutSeconds is 1 s; the header deadline would wait 120 s.
    with socket.create_connection(("127.0.0.1", served.server.port), timeout=DEADLINE_SECONDS) as raw:
        raw.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, and no more
        assert raw.recv(4096) == b""  # closed by the server, before this socket's own timeout


def test_stop_closes_idle_connections_and_answers_the_request_in_flight(tmp_path: Path) -> None:
    served = start_server(tmp_path, WebhookConfig())
    idle = served.connect()
    stopper = threading.Thread(target=served.server.stop)
    try:
        assert served.post(idle, pod_review("before"))[0] == 200
        body = json.dumps(pod_review("in-flight")).encode()
        with _tls_socket(served) as tls:
            tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            tls.sendall(body[:10])
            stopper.start()
            assert idle.sock is not None
            assert until_closed(idle.sock) == b""  # closed while the other request is still open
            tls.sendall(body[10:])
            answer = until_closed(tls)
        assert answer.startswith(b"HTTP/1.1 200") and b"\r\nConnection: close\r\n" in answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["response"]["uid"] == "in-flight"
    finally:
        idle.close()
        if not stopper.is_alive() and stopper.ident is None:
            served.server.stop()
        stopper.join()


def test_stop_drains_connections_whose_descriptors_are_above_select_s_limit(tmp_path: Path) -> None:
    # A container's open-file limit is often far above 1024 (FD_SETSIZE), and under a flood of
    # connections the server's sockets get numbers above it, where select() cannot look.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        if hard != resource.RLIM_INFINITY and hard < 2048:
            pytest.fail(f"this test needs 2048 open files; the hard limit (ulimit -Hn) is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    served = start_server(tmp_path, WebhookConfig())
    stopper = threading.Thread(target=served.server.stop)
    idle = served.connect()
    try:
        assert served.post(idle, pod_review("before"))[0] == 200
        assert idle.sock is not None
        assert idle.sock.fileno() > 1024  # the server's end, accepted after it, is numbered higher
        stopper.start()
        assert until_closed(idle.sock) == b""
        stopper.join(timeout=10)
        assert not stopper.is_alive()
    finally:
        idle.close()
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if stopper.ident is None:
            served.server.stop()
        stopper.join()
