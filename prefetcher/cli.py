"""The command line, and the one place that reads flags, files and environment and wires adapters."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry

from prefetcher import __version__
from prefetcher.adapters.cri import CriImageRuntime, detect_endpoint
from prefetcher.adapters.disk import StatvfsDisk
from prefetcher.adapters.docker_config import read_docker_config
from prefetcher.adapters.files import FileModelSource, WatchedFile, read_config_file
from prefetcher.adapters.registry import HttpRegistry
from prefetcher.adapters.state import StateFile, StateLock
from prefetcher.agent.health import HealthServer, parse_address
from prefetcher.agent.pacer import Pacer, pacing_policy
from prefetcher.agent.reconciler import Reconciler
from prefetcher.agent.report import plan_document, print_plan
from prefetcher.agent.restart import RestartNotice
from prefetcher.agent.runtime_support import LogEvents, SystemClock, configure_logging
from prefetcher.agent.sources import MergedSource
from prefetcher.config import Config, load_config, load_models
from prefetcher.core.state import AgentState
from prefetcher.errors import ConfigError, PrefetchError
from prefetcher.metrics import Metrics
from prefetcher.ports import EventSink, FleetWarmth, ModelSource, PullSecrets, SlotLeases
from prefetcher.webhook.server import run_webhook

log = logging.getLogger("prefetcher")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prefetcher`` command."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PrefetchError as err:
        print(f"prefetcher: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefetcher", description="Keep modelcar images warm on this node.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    agent = sub.add_parser("agent", help="run the node agent")
    plan = sub.add_parser("plan", help="show what the agent would pull, evict and skip; changes nothing")
    for p in (agent, plan):
        p.add_argument("--config", type=Path, required=True, help="YAML config (the ConfigMap's agent.yaml)")
        p.add_argument(
            "--models", type=Path, help="models file to keep warm; without it, follow InferenceServices"
        )
        p.add_argument(
            "--inferenceservices",
            action="store_true",
            help="follow InferenceServices for this node even with --models (then both are kept warm)",
        )
        p.add_argument(
            "--node-name", default=os.environ.get("NODE_NAME", ""), help="this node (default $NODE_NAME)"
        )
        p.add_argument(
            "--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: in-cluster config"
        )
    agent.add_argument("--once", action="store_true", help="carry out one full plan and exit")
    agent.set_defaults(func=_run_agent)
    plan.add_argument("-o", "--output", choices=("text", "json"), default="text")
    plan.set_defaults(func=_run_plan)
    webhook = sub.add_parser("webhook", help="serve the modelcar wiring admission webhook (HTTPS)")
    webhook.add_argument("--config", type=Path, required=True, help="webhook YAML config")
    webhook.add_argument(
        "--cert", type=Path, required=True, help="serving certificate (PEM), reloaded on change"
    )
    webhook.add_argument("--key", type=Path, required=True, help="private key (PEM), reloaded on change")
    webhook.add_argument("--listen", default="0.0.0.0:8443", help="HOST:PORT to serve on")
    webhook.set_defaults(func=_run_webhook)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _args: print(f"prefetcher {__version__}") or 0)
    return parser


def _node_platform() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm/v7"}.get(machine, machine)
    return f"linux/{arch}"


def _wire(
    cfg: Config,
    *,
    config: Callable[[], Config],
    source: ModelSource,
    events: EventSink,
    metrics: Metrics,
    state: AgentState,
    save_state: Callable[[AgentState], None],
    after_pass: Callable[..., None] | None = None,
    pull_secrets: PullSecrets | None = None,
    wake: threading.Event | None = None,
    restart_pending: Callable[[], tuple[str, ...]] = tuple,
    fleet: _Fleet | None = None,
) -> Reconciler:
    """Build the reconciler and its adapters from the configuration at start-up."""
    endpoint = cfg.cri_endpoint or detect_endpoint()
    registry = HttpRegistry(
        insecure=frozenset(cfg.registries.insecure),
        credentials=read_docker_config(cfg.registries.auth_file) if cfg.registries.auth_file else None,
        ca_file=cfg.registries.ca_file or None,
        timeout_seconds=cfg.registries.timeout_seconds,
        platform=cfg.registries.platform or _node_platform(),
    )
    return Reconciler(
        runtime=CriImageRuntime(endpoint, timeout_seconds=cfg.cri_timeout_seconds),
        registry=registry,
        source=source,
        disk=StatvfsDisk(Path(cfg.image_fs_path)),
        events=events,
        metrics=metrics,
        clock=SystemClock(),
        config=config,
        state=state,
        save_state=save_state,
        draw=random.random,
        after_pass=after_pass,
        pull_secrets=pull_secrets,
        wake=wake,
        restart_pending=restart_pending,
        pacer=None if fleet is None else _pacer(fleet, events=events, metrics=metrics, config=config),
    )


class _Fleet(NamedTuple):
    """What fleet pacing talks to: the slot Leases, the nodes' warm digests, and this node's name."""

    leases: SlotLeases
    warmth: FleetWarmth
    node: str


def _pacer(fleet: _Fleet, *, events: EventSink, metrics: Metrics, config: Callable[[], Config]) -> Pacer:
    return Pacer(
        leases=fleet.leases,
        warmth=fleet.warmth,
        node=fleet.node,
        clock=SystemClock(),
        events=events,
        metrics=metrics,
        policy=lambda: pacing_policy(config().fleet),
    )


def _agent_namespace() -> str:
    """Where the agent's Leases live: ``$POD_NAMESPACE``, else its ServiceAccount's, else ``default``."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:  # not in a pod: a kubeconfig's user, as in development
        return "default"


class _Source(NamedTuple):
    """A model source and what comes with it: its Events, stop, after-pass hook and pull secrets.

    ``node_events`` is where reports about the agent itself go (rejected edits): the Node's Events
    in a cluster; None without one, where the log line is the report.
    """

    models: ModelSource
    events: EventSink
    stop: Callable[[], None]
    after_pass: Callable[..., None] | None = None
    pull_secrets: PullSecrets | None = None
    node_events: EventSink | None = None
    fleet: _Fleet | None = None


def _source(
    args: argparse.Namespace,
    cfg: Config,
    on_reload: Callable[[str, str], None],
    on_change: Callable[[], None] = lambda: None,
) -> _Source:
    """The models file and/or InferenceServices for this node, with what comes with them.

    ``on_change`` is called when the InferenceServices or this node change.
    """
    listed = None
    if args.models is not None:
        listed = FileModelSource(WatchedFile(args.models, load_models, on_reload=on_reload))
        if not args.inferenceservices:
            return _Source(listed, LogEvents(), lambda: None)
    if not args.node_name:
        raise ConfigError("--node-name (or $NODE_NAME) is required to follow InferenceServices")
    # Imported here: the Kubernetes client costs ~18 MiB and 0.3 s that a models-file node never needs.
    from prefetcher.adapters.kube import IsvcModelSource  # noqa: PLC0415
    from prefetcher.adapters.kube_api import EventRecorder, KubeEventSink, api_client  # noqa: PLC0415
    from prefetcher.adapters.leases import LeaseStore  # noqa: PLC0415
    from prefetcher.adapters.node_condition import NodeCondition, models_warm  # noqa: PLC0415
    from prefetcher.adapters.node_status import NodeSummary  # noqa: PLC0415
    from prefetcher.adapters.node_taint import StartupTaint  # noqa: PLC0415
    from prefetcher.adapters.node_warm import NodeWarmth  # noqa: PLC0415
    from prefetcher.adapters.pull_secrets import ServiceAccountPullSecrets  # noqa: PLC0415

    api = api_client(kubeconfig=args.kubeconfig)
    k = cfg.kubernetes
    recorder = EventRecorder(api, clock=SystemClock(), host=args.node_name)
    source = IsvcModelSource(
        api,
        node_name=args.node_name,
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
    # A pass fails until the first list, so the taint is never lifted as "warm" on a desired set that
    # was simply not listed yet; failed passes still reach the hook, so the deadline holds.
    taint = StartupTaint(
        api,
        node_name=args.node_name,
        key=k.startup_taint,
        deadline_seconds=k.startup_taint_deadline_seconds,
        clock=SystemClock(),
    )
    events = KubeEventSink(recorder=recorder, resolve=source.object_for)
    publisher = NodeSummary(api, node_name=args.node_name)
    condition = None
    if k.models_warm_condition:
        condition = NodeCondition(
            api, node_name=args.node_name, condition_type=k.models_warm_condition, clock=SystemClock()
        )

    def after_pass(*, settled: bool, passed: bool, summary: dict[str, Any]) -> None:
        taint.after_pass(settled=settled)
        publisher.publish(summary)
        if condition is not None:
            condition.publish(models_warm(settled=settled, passed=passed, summary=summary))

    secrets = None
    if cfg.credentials.service_account_pull_secrets:
        secrets = ServiceAccountPullSecrets(api, records=source.record, clock=SystemClock())
    # Models of the file are nobody's InferenceService: their Events go to this Node.
    merged: ModelSource = source if listed is None else MergedSource(listed, source)
    leases = LeaseStore(api, namespace=_agent_namespace(), clock=SystemClock())
    fleet = _Fleet(leases, NodeWarmth(api, node_name=args.node_name), args.node_name)
    return _Source(merged, events, source.stop, after_pass, secrets, node_events=events, fleet=fleet)


def _run_agent(args: argparse.Namespace) -> int:
    metrics = Metrics(CollectorRegistry())
    sinks: list[EventSink] = []

    def report(reason: str, message: str) -> None:
        # An SRE's edit is worth an Event on the node, not only a log line (already written).
        for sink in sinks:
            sink.emit(("node",), warning=True, reason=reason, message=message)

    def count(outcome: str, message: str) -> None:
        metrics.config_reloads.labels(outcome).inc()
        if outcome != "success":
            report("ConfigRejected", message)

    config = WatchedFile(args.config, load_config, on_reload=count)
    cfg = config.current()
    configure_logging(level=cfg.log_level, json_format=cfg.log_format == "json")
    # One agent per state file, before anything else starts: a second one is refused at once.
    lock = StateLock(Path(cfg.state_file))
    lock.acquire()
    notice = RestartNotice(cfg, report=lambda message: report("ConfigRestartPending", message))
    wired: list[Reconciler] = []
    # Served before the first list of InferenceServices (up to a minute), so the liveness probe
    # does not restart an agent that is waiting for the API server.
    try:
        server = HealthServer(
            address=parse_address(cfg.listen_address),
            registry=metrics.registry,
            live=lambda: (True, "ok"),
            ready=lambda: _readiness(wired),
        )
    except OSError as err:
        lock.release()
        reason = err.strerror or str(err)
        raise ConfigError(f"listenAddress {cfg.listen_address}: cannot listen: {reason}") from err
    server.start()
    try:
        return _serve(
            args,
            config=lambda: notice.seen(config.current()),
            cfg=cfg,
            metrics=metrics,
            count=count,
            sinks=sinks,
            wired=wired,
            restart_pending=lambda: notice.pending,
        )
    finally:
        server.stop()
        lock.release()


def _readiness(wired: list[Reconciler]) -> tuple[bool, str]:
    if not wired:
        return False, "starting"
    reconciler = wired[0]
    return reconciler.healthy, f"passes={reconciler.passes} runtime_ok={reconciler.healthy}"


def _serve(
    args: argparse.Namespace,
    *,
    config: Callable[[], Config],
    cfg: Config,
    metrics: Metrics,
    count: Callable[[str, str], None],
    sinks: list[EventSink],
    wired: list[Reconciler],
    restart_pending: Callable[[], tuple[str, ...]],
) -> int:
    wake = threading.Event()  # set by a source change: plan again now, not at the next resync
    source = _source(args, cfg, count, wake.set)
    if source.node_events is not None:
        sinks.append(source.node_events)
    state = StateFile(Path(cfg.state_file))
    # Hot reload: every pass reads the latest good config; endpoints and listen address need a restart.
    reconciler = _wire(
        cfg,
        config=config,
        source=source.models,
        events=source.events,
        metrics=metrics,
        state=state.load(),
        save_state=state.save,
        after_pass=source.after_pass,
        pull_secrets=source.pull_secrets,
        wake=wake,
        restart_pending=restart_pending,
        fleet=source.fleet,
    )
    stop = threading.Event()
    received: list[str] = []

    def request_stop(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()
        wake.set()  # the loop sleeps on ``wake``

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    wired.append(reconciler)
    log.info(
        "prefetcher %s starting (config %s, models %s)", __version__, args.config, args.models or "cluster"
    )
    try:
        code = reconciler.run(stop, once=args.once)
    finally:
        source.stop()
    if received or not args.once:
        log.info(
            "prefetcher stopping%s after %d passes; %s pulls under way abandoned",
            f" on {received[0]}" if received else "",
            reconciler.passes,
            reconciler.summary()["pulling"],
        )
    if args.once:
        print_plan(reconciler.report.plan, failed=reconciler.report.failed)
    return code


def _run_webhook(args: argparse.Namespace) -> int:
    configure_logging(level="info", json_format=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return run_webhook(
        config_path=args.config, cert_path=args.cert, key_path=args.key, listen=args.listen, stop=stop
    )


def _run_plan(args: argparse.Namespace) -> int:
    cfg = load_config(read_config_file(args.config))
    configure_logging(level="warning", json_format=False)
    source = _source(args, cfg, lambda *_: None)
    # Read only: no lock (plan may run beside the agent), no key created, nothing set aside.
    saved = StateFile(Path(cfg.state_file), writable=False).load()
    # A dry run writes nothing: no state, no Events (they go to the log).
    reconciler = _wire(
        cfg,
        config=lambda: cfg,
        source=source.models,
        events=LogEvents(),
        metrics=Metrics(CollectorRegistry()),
        state=saved,
        save_state=lambda _state: None,
        pull_secrets=source.pull_secrets,
        fleet=source.fleet,
    )
    try:
        plan = reconciler.dry_run()
    finally:
        source.stop()
    if args.output == "json":
        print(json.dumps(plan_document(plan), indent=2, default=str))
    else:
        print_plan(plan, failed={})
    return 0
