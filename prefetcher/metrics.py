"""Every Prometheus metric of the agent, in one place, on an injected registry.

Labels are bounded (outcome, reason, state): a digest is never a label value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


class Metrics:
    """The agent's metrics; one instance per process, built by the CLI."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.pulls = Counter(
            "prefetcher_pulls_total",
            "Pulls finished, by outcome and reason.",
            ["outcome", "reason"],
            registry=registry,
        )
        self.pull_duration = Histogram(
            "prefetcher_pull_duration_seconds",
            "Duration of successful pulls.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.pulled_bytes = Counter(
            "prefetcher_pulled_bytes_total", "Disk bytes added by successful pulls.", registry=registry
        )
        self.evictions = Counter(
            "prefetcher_evictions_total",
            "Images removed by the agent, by reason.",
            ["reason"],
            registry=registry,
        )
        self.managed_bytes = Gauge(
            "prefetcher_managed_bytes",
            "Disk bytes of the images the agent pulled and holds.",
            registry=registry,
        )
        self.budget_bytes = Gauge(
            "prefetcher_budget_bytes", "Image filesystem bytes the agent may fill up to.", registry=registry
        )
        self.fs_used_bytes = Gauge(
            "prefetcher_image_fs_used_bytes",
            "Used bytes of the image filesystem, as kubelet counts them (capacity minus available).",
            registry=registry,
        )
        self.fs_capacity_bytes = Gauge(
            "prefetcher_image_fs_capacity_bytes", "Size of the image filesystem in bytes.", registry=registry
        )
        self.fs_usage_ratio = Gauge(
            "prefetcher_image_fs_usage_ratio", "Used over total of the image filesystem.", registry=registry
        )
        self.models = Gauge(
            "prefetcher_models",
            "Desired models by state (warm, pulling, skipped, pending).",
            ["state"],
            registry=registry,
        )
        self.skipped = Gauge(
            "prefetcher_models_skipped",
            "Desired models skipped in the last pass, by reason.",
            ["reason"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "prefetcher_config_reloads_total",
            "Config and models file reloads, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "prefetcher_reconcile_errors_total",
            "Reconcile passes that failed, by error.",
            ["error"],
            registry=registry,
        )
        self.last_reconcile = Gauge(
            "prefetcher_last_reconcile_timestamp_seconds", "When the last pass completed.", registry=registry
        )
        self.pacing_waiting = Gauge(
            "prefetcher_pacing_waiting_models",
            "Models waiting for a turn to pull in the last pass, by reason (seed, fleet, registry).",
            ["reason"],
            registry=registry,
        )
        self.pacing_deadline = Counter(
            "prefetcher_pacing_deadline_passed_total",
            "Pulls started without a turn because they waited fleet.maxWaitSeconds.",
            registry=registry,
        )
        self.pacing_errors = Counter(
            "prefetcher_pacing_errors_total",
            "Lease and node calls of fleet pacing that failed, by operation; pacing fails open.",
            ["operation"],
            registry=registry,
        )
