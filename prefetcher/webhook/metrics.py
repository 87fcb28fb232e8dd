"""The webhook's Prometheus metrics, on an injected registry (the agent's live in ``prefetcher.metrics``).

Labels are bounded: ``outcome`` is one of ``handler.Outcome`` or ``rejected`` (a request the
server refused before the handler: wrong path, method, size, a malformed request or a timeout).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Admission latency is in the milliseconds; the API server gives up after timeoutSeconds (<= 30 s).
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WebhookMetrics:
    """Request counts by outcome, request latency, certificate reloads and expiry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "prefetcher_webhook_requests_total",
            "Admission requests answered, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "prefetcher_webhook_request_duration_seconds",
            "Time from a request's first body byte to its response being written.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.certificate_reloads = Counter(
            "prefetcher_webhook_certificate_reloads_total",
            "Reloads of the serving certificate and key after the files changed, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.certificate_expiry = Gauge(
            "prefetcher_webhook_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate in use, as a Unix timestamp.",
            registry=registry,
        )
