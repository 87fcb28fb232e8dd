"""Per InferenceService, "warm on N of M eligible nodes" as an Event, written by one agent of the fleet.

Every agent could count, from the Node summaries, on how many nodes each InferenceService is
warm; fifty agents announcing the same change would be fifty Events. So the agents elect one
reporter through a ``coordination.k8s.io`` Lease in their own namespace (``LeaderLease``, client-go's
scheme in small: a holder renews ``renewTime``; another agent takes over only after it saw the
Lease unchanged for ``leaseDurationSeconds`` by its own clock, so clock skew between nodes does not
matter; that duration is read as fleet pacing reads a slot's, ``core.pacing.held_for``: missing or
junk counts as the agent's own, more than three times its own as three times; writes carry the
``resourceVersion`` read, so two candidates never both win). The
holder lists the Node summaries every period and records a ``ModelWarmth`` Event on each
InferenceService whose count changed since it last announced it (``kubectl describe isvc`` shows
it). A new holder remembers nothing, so it announces every InferenceService once. Summaries are
read as untrusted (``core.warmth.node_entries``): a node whose summary is junk counts nowhere and
the others still count; a round that fails anyway is logged and the next one runs.

Events, not a condition in the InferenceService's ``status``: KServe's controller owns that status
and rewrites its conditions; a second writer there would need ``inferenceservices/status`` patch
rights and would race it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import client

from prefetcher.adapters.cluster_view import node_summaries
from prefetcher.adapters.kube import IsvcModelSource
from prefetcher.adapters.kube_api import (
    EventRecorder,
    KubeStatusError,
    ObjectRef,
    agent_namespace,
    discard,
    kube_errors,
    micro_time,
)
from prefetcher.adapters.leases import lease_state
from prefetcher.config import KubernetesConfig
from prefetcher.core.isvc import IsvcModels
from prefetcher.core.pacing import held_for
from prefetcher.core.warmth import Summary, Warmth, isvc_warmth
from prefetcher.errors import KubeError
from prefetcher.ports import Clock

log = logging.getLogger(__name__)
LEASE_NAME = "modelcar-prefetcher-warmth-reporter"
REASON = "ModelWarmth"
TIMEOUT_SECONDS = 10.0


class LeaderLease:
    """One named Lease that at most one holder keeps; ``hold`` takes or renews it."""

    def __init__(
        self, api: Any, *, namespace: str, holder: str, duration_seconds: float, clock: Clock
    ) -> None:
        self._leases: Any = client.CoordinationV1Api(api)
        self._namespace, self._holder, self._clock = namespace, holder, clock
        self._duration = max(int(duration_seconds), 1)
        self._seen: tuple[str, float] = ("", 0.0)  # another holder's version, and when first seen

    def hold(self) -> bool:
        """Take the Lease if free or expired, renew it if ours; True while this agent holds it."""
        lease = self._read()
        if lease is None:
            return self._write(None)
        metadata, spec = lease.get("metadata") or {}, lease.get("spec") or {}
        version, holder = str(metadata.get("resourceVersion", "")), spec.get("holderIdentity") or ""
        if holder and holder != self._holder:
            now = self._clock.monotonic()
            if version != self._seen[0]:
                self._seen = (version, now)
            # Read as pacing reads slots: a junk or huge duration holds three of ours at most.
            duration = held_for(lease_state(lease).duration_seconds, self._duration)
            if now - self._seen[1] < duration:
                return False
        return self._write(version)

    def release(self) -> None:
        """Give the Lease up (empty holder) if ours, so another agent takes it at once."""
        lease = self._read()
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self._holder:
            return
        self._write(str(lease["metadata"].get("resourceVersion", "")), holder="")

    def _read(self) -> Mapping[str, Any] | None:
        try:
            with kube_errors(f"reading lease {self._namespace}/{LEASE_NAME}"):
                response = self._leases.read_namespaced_lease(
                    LEASE_NAME, self._namespace, _preload_content=False, _request_timeout=TIMEOUT_SECONDS
                )
                try:
                    return dict(json.loads(response.data))
                finally:
                    response.release_conn()
        except KubeStatusError as err:
            if err.status == 404:
                return None
            raise

    def _write(self, version: str | None, *, holder: str | None = None) -> bool:
        now = micro_time(self._clock.now())
        metadata = {"name": LEASE_NAME} | ({"resourceVersion": version} if version else {})
        spec = {
            "holderIdentity": self._holder if holder is None else holder,
            "leaseDurationSeconds": self._duration,
            "renewTime": now,
        }
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}
        try:
            with kube_errors(f"writing lease {self._namespace}/{LEASE_NAME}"):
                options = {"_preload_content": False, "_request_timeout": TIMEOUT_SECONDS}
                if version is None:
                    response = self._leases.create_namespaced_lease(self._namespace, body, **options)
                else:
                    replace = self._leases.replace_namespaced_lease
                    response = replace(LEASE_NAME, self._namespace, body, **options)
                discard(response)
        except KubeStatusError as err:
            if err.status in (404, 409):  # another agent wrote it first (or deleted it): not ours
                return False
            raise
        return True


class WarmthReporter:
    """While it holds the Lease, a ``ModelWarmth`` Event on each InferenceService whose count changed."""

    def __init__(
        self,
        *,
        lease: LeaderLease,
        summaries: Callable[[], Mapping[str, Summary]],
        records: Callable[[], Iterable[IsvcModels]],
        object_for: Callable[[str], ObjectRef],
        recorder: EventRecorder,
        period_seconds: float,
    ) -> None:
        self._lease, self._summaries, self._records = lease, summaries, records
        self._object_for, self._recorder, self._period = object_for, recorder, period_seconds
        self._announced: dict[str, Warmth] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="warmth-reporter", daemon=True)

    def report(self) -> int:
        """One round; the number of Events recorded (0 when another agent is the reporter)."""
        if not self._lease.hold():
            self._announced.clear()  # whoever holds it now announces; we may miss changes meanwhile
            return 0
        warmth = isvc_warmth(self._summaries())
        current = {r.key: r for r in self._records() if r.components}
        recorded = 0
        for key, record in sorted(current.items()):
            now = warmth.get(key, Warmth(0, 0))
            if self._announced.get(key) == now:
                continue
            self._recorder.record(self._object_for(record.source), reason=REASON, message=now.message())
            log.info("InferenceService %s: %s", key, now.message())
            self._announced[key] = now
            recorded += 1
        self._announced = {k: w for k, w in self._announced.items() if k in current}
        return recorded

    def start(self) -> None:
        """Report every period in a thread of its own until ``stop``."""
        self._thread.start()

    def stop(self) -> None:
        """Stop reporting and give the Lease up."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * TIMEOUT_SECONDS)
        try:
            self._lease.release()
        except KubeError as err:
            log.warning("warmth reporter lease not released (it expires): %s", err)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.report()
            except KubeError as err:  # the next round tries again; pulls are unaffected
                log.warning("warmth report failed: %s", err)
            except Exception:  # the top of this thread's loop: a bug must not end reporting for good
                log.exception("warmth report failed unexpectedly; trying again next period")
            self._stop.wait(self._period)


def warmth_reporter(
    api: Any,
    *,
    cfg: KubernetesConfig,
    source: IsvcModelSource,
    recorder: EventRecorder,
    node_name: str,
    clock: Clock,
) -> WarmthReporter:
    """The reporter of an agent following InferenceServices; its Lease lasts three periods."""
    # The Lease outlives two missed renewals (a slow API server), not a dead holder for long.
    period = cfg.warmth_events_period_seconds
    lease = LeaderLease(
        api, namespace=agent_namespace(), holder=node_name, duration_seconds=3 * period, clock=clock
    )
    return WarmthReporter(
        lease=lease,
        summaries=lambda: node_summaries(api),
        records=source.records,
        object_for=source.object_for,
        recorder=recorder,
        period_seconds=period,
    )
