"""The webhook's object graph, for ``prefetcher webhook``: config, metrics, certificates, server.

``webhook.server`` only serves; this module reads the config file, builds the metrics and the
certificate store that reports into them, binds the server and runs it until a signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from prefetcher.agent.runtime_support import configure_logging
from prefetcher.errors import ConfigError
from prefetcher.webhook.config import load_webhook_config
from prefetcher.webhook.metrics import WebhookMetrics
from prefetcher.webhook.server import WebhookServer, parse_listen
from prefetcher.webhook.tls import CertificateStore

# Lines about the server, under the server's name (log filters select on it).
log = logging.getLogger("prefetcher.webhook.server")


@dataclass(frozen=True)
class WebhookOptions:
    """The flags of ``prefetcher webhook``."""

    config_path: Path
    """The webhook's YAML config (``--config``)."""
    cert_path: Path
    """Serving certificate, PEM (``--cert``); reloaded on change."""
    key_path: Path
    """Its private key, PEM (``--key``); reloaded on change."""
    listen: str
    """``HOST:PORT`` to serve on (``--listen``)."""


def serve_webhook(options: WebhookOptions) -> int:
    """Serve until SIGTERM or SIGINT, then drain (exit code)."""
    configure_logging(level="info", json_format=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return run_webhook(
        config_path=options.config_path,
        cert_path=options.cert_path,
        key_path=options.key_path,
        listen=options.listen,
        stop=stop,
    )


def run_webhook(
    *, config_path: Path, cert_path: Path, key_path: Path, listen: str, stop: threading.Event
) -> int:
    """Serve the webhook until ``stop`` is set, then drain; raises ``ConfigError`` on a bad config or cert."""
    try:
        config = load_webhook_config(Path(config_path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read webhook config {config_path}: {error}") from error
    metrics = WebhookMetrics(CollectorRegistry())
    certs = CertificateStore(
        Path(cert_path),
        Path(key_path),
        on_reload=lambda outcome: metrics.certificate_reloads.labels(outcome).inc(),
        on_expiry=metrics.certificate_expiry.set,
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
    log.info("webhook stopping: answering the reviews in flight")
    server.stop()
    log.info("webhook stopped")
    return 0
