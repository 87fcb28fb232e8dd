"""The agent in a cluster: InferenceServices for this node, Events, pull secrets, node hooks.

Imported only when the node follows InferenceServices: the Kubernetes client costs ~18 MiB and
0.3 s that a models-file node never needs. Everything here shares one API client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prefetcher.adapters.kube import IsvcModelSource
from prefetcher.adapters.kube_api import EventRecorder, KubeEventSink, agent_namespace, api_client
from prefetcher.adapters.leases import LeaseStore
from prefetcher.adapters.node_condition import NodeCondition, models_warm
from prefetcher.adapters.node_status import NodeSummary
from prefetcher.adapters.node_taint import StartupTaint
from prefetcher.adapters.node_warm import NodeWarmth
from prefetcher.adapters.pull_secrets import ServiceAccountPullSecrets
from prefetcher.adapters.warmth_report import warmth_reporter
from prefetcher.agent.runtime_support import SystemClock
from prefetcher.config import Config
from prefetcher.wiring.feed import ModelFeed
from prefetcher.wiring.fleet import Fleet

log = logging.getLogger("prefetcher")


class NodeHooks:
    """The cluster's after-pass hook: lift the start-up taint, publish the summary and the condition."""

    def __init__(
        self, *, taint: StartupTaint, publisher: NodeSummary, condition: NodeCondition | None
    ) -> None:
        self._taint = taint
        self._publisher = publisher
        self._condition = condition

    def __call__(self, *, settled: bool, passed: bool, summary: dict[str, object]) -> None:
        """Update this node after a pass."""
        self._taint.after_pass(settled=settled)
        self._publisher.publish(summary)
        if self._condition is not None:
            self._condition.publish(models_warm(settled=settled, passed=passed, summary=summary))


def cluster_feed(
    cfg: Config,
    *,
    node_name: str,
    kubeconfig: str | None,
    on_change: Callable[[], None],
    report_warmth: bool = False,
) -> ModelFeed:
    """InferenceServices for ``node_name``, their Events, the node's hooks and the workloads' pull secrets.

    ``on_change`` is called when the InferenceServices or this node change; with ``report_warmth``
    the agent stands for election as the one that records ``ModelWarmth`` Events.
    """
    api = api_client(kubeconfig=kubeconfig)
    k = cfg.kubernetes
    recorder = EventRecorder(api, clock=SystemClock(), host=node_name)
    source = IsvcModelSource(
        api,
        node_name=node_name,
        namespaces=k.namespaces,
        default_priority=k.default_priority,
        scale_to_zero_boost=k.scale_to_zero_boost,
        priority_annotation=k.priority_annotation,
        ignore_taints=frozenset({k.startup_taint} - {""}),
        node_selector=k.node_selector or None,
        recorder=recorder,
        on_change=on_change,
    )
    source.start()
    if not source.wait_synced(timeout_seconds=60):
        log.warning("InferenceServices not listed within 60s; carrying on, the watch keeps trying")
    hooks = _node_hooks(api, node_name, cfg)
    events = KubeEventSink(recorder=recorder, resolve=source.object_for)
    secrets = None
    if cfg.credentials.service_account_pull_secrets:
        secrets = ServiceAccountPullSecrets(api, records=source.record, clock=SystemClock())
    stop: Callable[[], None] = source.stop
    if report_warmth and k.warmth_events_period_seconds > 0:
        reporter = warmth_reporter(
            api, cfg=k, source=source, recorder=recorder, node_name=node_name, clock=SystemClock()
        )
        reporter.start()

        def stop() -> None:
            reporter.stop()
            source.stop()

    leases = LeaseStore(api, namespace=agent_namespace(), clock=SystemClock())
    fleet = Fleet(leases, NodeWarmth(api, node_name=node_name), node_name)
    return ModelFeed(source, events, stop, hooks, secrets, node_events=events, fleet=fleet)


def _node_hooks(api: Any, node_name: str, cfg: Config) -> NodeHooks:
    k = cfg.kubernetes
    # A pass fails until the first list, so the taint is never lifted as "warm" on a desired set that
    # was simply not listed yet; failed passes still reach the hook, so the deadline holds.
    taint = StartupTaint(
        api,
        node_name=node_name,
        key=k.startup_taint,
        deadline_seconds=k.startup_taint_deadline_seconds,
        clock=SystemClock(),
    )
    condition = None
    if k.models_warm_condition:
        condition = NodeCondition(
            api, node_name=node_name, condition_type=k.models_warm_condition, clock=SystemClock()
        )
    return NodeHooks(taint=taint, publisher=NodeSummary(api, node_name=node_name), condition=condition)
