"""The agent's object graph, for ``prefetcher agent`` and ``prefetcher plan``.

Start-up order matters and is kept here: the config is watched and logging set first; the state
lock is taken before anything else starts (a second agent is refused at once); the health server
answers before the first list of InferenceServices (up to a minute), so the liveness probe does not
restart an agent that waits for the API server; signals are handled once the loop is built.
"""

from __future__ import annotations

import logging
import platform
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from prefetcher import __version__
from prefetcher.adapters.cri import CriImageRuntime, detect_endpoint
from prefetcher.adapters.disk import StatvfsDisk
from prefetcher.adapters.docker_config import read_docker_config
from prefetcher.adapters.files import FileModelSource, WatchedFile, read_config_file
from prefetcher.adapters.registry import HttpRegistry
from prefetcher.adapters.state import StateFile, StateLock
from prefetcher.agent.health import HealthServer
from prefetcher.agent.reconciler import Reconciler
from prefetcher.agent.restart import RestartNotice
from prefetcher.agent.runtime_support import LogEvents, SystemClock, configure_logging
from prefetcher.agent.sources import MergedSource
from prefetcher.agent.status import AgentStatus, PassReport, StatusBoard
from prefetcher.config import Config, load_config, load_models
from prefetcher.core.address import parse_host_port
from prefetcher.core.model import Plan
from prefetcher.core.state import AgentState
from prefetcher.errors import ConfigError
from prefetcher.metrics import Metrics
from prefetcher.wiring.feed import ModelFeed, NodeReports
from prefetcher.wiring.fleet import pacer

log = logging.getLogger("prefetcher")


@dataclass(frozen=True)
class AgentOptions:
    """The flags ``agent`` and ``plan`` share, and ``agent --once``."""

    config_path: Path
    """The agent's YAML config (``--config``)."""
    models_path: Path | None
    """The models file (``--models``); None to follow InferenceServices only."""
    follow_inferenceservices: bool
    """``--inferenceservices``: follow them even with a models file."""
    node_name: str
    """This node (``--node-name``, default ``$NODE_NAME``)."""
    kubeconfig: str | None
    """``--kubeconfig``; None for the in-cluster config."""
    once: bool = False
    """``--once``: carry out one full plan and exit."""


@dataclass(frozen=True)
class AgentRun:
    """How a run ended: its exit code, and with ``once`` the report of its last pass."""

    code: int
    report: PassReport | None = None


@dataclass(frozen=True)
class _Started:
    """What exists before the model sources: the watched config, metrics, reports and status."""

    config: Callable[[], Config]
    cfg: Config
    metrics: Metrics
    on_reload: Callable[[str, str], None]
    reports: NodeReports
    status: StatusBoard
    restart_pending: Callable[[], tuple[str, ...]]


def run_agent(options: AgentOptions) -> AgentRun:
    """Run the node agent until a signal, or with ``once`` until the plan is carried out."""
    metrics = Metrics(CollectorRegistry())
    reports = NodeReports()

    def on_reload(outcome: str, message: str) -> None:
        metrics.config_reloads.labels(outcome).inc()
        if outcome != "success":  # an SRE's edit is worth an Event on the node, not only a log line
            reports.report("ConfigRejected", message)

    config = WatchedFile(options.config_path, load_config, on_reload=on_reload)
    cfg = config.current()
    configure_logging(level=cfg.log_level, json_format=cfg.log_format == "json")
    lock = StateLock(Path(cfg.state_file))
    lock.acquire()
    notice = RestartNotice(cfg, report=lambda message: reports.report("ConfigRestartPending", message))
    status = StatusBoard()
    try:
        server = HealthServer(
            address=parse_host_port(cfg.listen_address),
            registry=metrics.registry,
            live=lambda: (True, "ok"),
            ready=lambda: readiness(status.read()),
        )
    except OSError as err:
        lock.release()
        reason = err.strerror or str(err)
        raise ConfigError(f"listenAddress {cfg.listen_address}: cannot listen: {reason}") from err
    server.start()
    # Hot reload: every pass reads the latest good config; endpoints and listen address need a restart.
    started = _Started(
        config=lambda: notice.seen(config.current()),
        cfg=cfg,
        metrics=metrics,
        on_reload=on_reload,
        reports=reports,
        status=status,
        restart_pending=lambda: notice.pending,
    )
    try:
        return _serve(options, started)
    finally:
        server.stop()
        lock.release()


def readiness(status: AgentStatus) -> tuple[bool, str]:
    """``/readyz``: ready once a pass reached the runtime, and while the last one did."""
    if status.passes == 0 and not status.last_error:
        return False, "starting"
    return status.healthy, f"passes={status.passes} runtime_ok={status.healthy}"


def _serve(options: AgentOptions, started: _Started) -> AgentRun:
    wake = threading.Event()  # set by a source change: plan again now, not at the next resync
    feed = model_feed(
        options,
        started.cfg,
        on_reload=started.on_reload,
        on_change=wake.set,
        report_warmth=not options.once,
    )
    try:
        started.reports.attach(feed.node_events)
        state = StateFile(Path(started.cfg.state_file))
        reconciler = _reconciler(
            started.cfg,
            config=started.config,
            feed=feed,
            metrics=started.metrics,
            state=state.load(),
            save_state=state.save,
            wake=wake,
            restart_pending=started.restart_pending,
            status=started.status,
        )
        stop = _SignalStop(wake)
        log.info(
            "prefetcher %s starting (config %s, models %s)",
            __version__,
            options.config_path,
            options.models_path or "cluster",
        )
        code = reconciler.run(stop.event, once=options.once)
    finally:
        feed.stop()
    status = reconciler.status()
    if stop.received or not options.once:
        log.info(
            "prefetcher stopping%s after %d passes; %s pulls under way abandoned",
            f" on {stop.received}" if stop.received else "",
            status.passes,
            len(status.pulling),
        )
    return AgentRun(code, status.report if options.once else None)


class _SignalStop:
    """SIGTERM and SIGINT set ``event`` and wake the loop (it sleeps on ``wake``)."""

    def __init__(self, wake: threading.Event) -> None:
        self.event = threading.Event()
        self.received = ""
        self._wake = wake
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.received = self.received or signal.Signals(signum).name
        self.event.set()
        self._wake.set()


def dry_run(options: AgentOptions) -> Plan:
    """``prefetcher plan``: what a pass would pull, evict and skip now; changes nothing."""
    cfg = load_config(read_config_file(options.config_path))
    configure_logging(level="warning", json_format=False)
    feed = model_feed(options, cfg, on_reload=lambda *_: None)
    try:
        # Read only: no lock (plan may run beside the agent), no key created, nothing set aside.
        saved = StateFile(Path(cfg.state_file), writable=False).load()
        # A dry run writes nothing: no state, no Events (they go to the log), no hooks.
        reconciler = _reconciler(
            cfg,
            config=lambda: cfg,
            feed=ModelFeed(
                feed.models, LogEvents(), feed.stop, pull_secrets=feed.pull_secrets, fleet=feed.fleet
            ),
            metrics=Metrics(CollectorRegistry()),
            state=saved,
            save_state=lambda _state: None,
        )
        return reconciler.dry_run()
    finally:
        feed.stop()


def model_feed(
    options: AgentOptions,
    cfg: Config,
    *,
    on_reload: Callable[[str, str], None],
    on_change: Callable[[], None] = lambda: None,
    report_warmth: bool = False,
) -> ModelFeed:
    """The models file and/or InferenceServices for this node, with what comes with them.

    ``on_reload`` is told about models-file reloads; ``on_change`` is called when the
    InferenceServices or this node change; ``report_warmth`` takes part in electing the agent that
    records ``ModelWarmth`` Events (not for a dry run or a one-shot run).
    """
    listed = None
    if options.models_path is not None:
        listed = FileModelSource(WatchedFile(options.models_path, load_models, on_reload=on_reload))
        if not options.follow_inferenceservices:
            return ModelFeed(listed, LogEvents(), lambda: None)
    if not options.node_name:
        raise ConfigError("--node-name (or $NODE_NAME) is required to follow InferenceServices")
    from prefetcher.wiring.cluster import cluster_feed  # noqa: PLC0415 (the Kubernetes client, on demand)

    cluster = cluster_feed(
        cfg,
        node_name=options.node_name,
        kubeconfig=options.kubeconfig,
        on_change=on_change,
        report_warmth=report_warmth,
    )
    if listed is None:
        return cluster
    # Models of the file are nobody's InferenceService: their Events go to this Node.
    return replace(cluster, models=MergedSource(listed, cluster.models))


def _reconciler(
    cfg: Config,
    *,
    config: Callable[[], Config],
    feed: ModelFeed,
    metrics: Metrics,
    state: AgentState,
    save_state: Callable[[AgentState], None],
    wake: threading.Event | None = None,
    restart_pending: Callable[[], tuple[str, ...]] = tuple,
    status: StatusBoard | None = None,
) -> Reconciler:
    """The reconcile loop and its adapters, from the configuration at start-up."""
    endpoint = cfg.cri_endpoint or detect_endpoint()
    registries = cfg.registries
    registry = HttpRegistry(
        insecure=frozenset(registries.insecure),
        credentials=read_docker_config(registries.auth_file) if registries.auth_file else None,
        ca_file=registries.ca_file or None,
        timeout_seconds=registries.timeout_seconds,
        platform=registries.platform or _node_platform(),
    )
    return Reconciler(
        runtime=CriImageRuntime(endpoint, timeout_seconds=cfg.cri_timeout_seconds),
        registry=registry,
        source=feed.models,
        disk=StatvfsDisk(Path(cfg.image_fs_path)),
        events=feed.events,
        metrics=metrics,
        clock=SystemClock(),
        config=config,
        state=state,
        save_state=save_state,
        draw=random.random,
        after_pass=feed.after_pass,
        pull_secrets=feed.pull_secrets,
        wake=wake,
        restart_pending=restart_pending,
        status=status,
        pacer=None
        if feed.fleet is None
        else pacer(feed.fleet, events=feed.events, metrics=metrics, config=config),
    )


def _node_platform() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm/v7"}.get(machine, machine)
    return f"linux/{arch}"
