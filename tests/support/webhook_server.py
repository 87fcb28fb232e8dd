"""Test support: the webhook's HTTPS server run in-process on loopback, with a CA of its own.

``start_server`` serves a certificate issued by a throwaway ``WebhookCA`` (whose PEM the API-server
tests register as the ``caBundle``); ``Served`` posts AdmissionReviews and reads ``/metrics``.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from prefetcher.webhook.config import WebhookConfig
from prefetcher.webhook.metrics import WebhookMetrics
from prefetcher.webhook.server import WebhookServer
from prefetcher.webhook.tls import CertificateStore
from tests.support.admission import admission_review
from tests.support.pki import certificate_builder

KSERVE = "internal.serving.kserve.io/storage-initializer-sourceuri"
PINNED = "oci://quay.io/acme/llama@sha256:" + "1" * 64


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
    """Serve on a free loopback port with a certificate of a new CA; the caller stops the server."""
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
