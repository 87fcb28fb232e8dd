"""Slot Leases (``coordination.k8s.io/v1``) in the agent's namespace, for fleet pull pacing.

Each slot of ``prefetcher.core.pacing`` is one Lease: ``holderIdentity`` is the node that pulls,
``renewTime`` and ``leaseDurationSeconds`` say how long it counts as held. Taking a slot is atomic
on the API server: a create answers 409 when another node created it first, an update carrying
the ``resourceVersion`` that was read answers 409 when anyone wrote it since. Both mean "another
node was first" and come back as ``None``; a release is a delete with the read version as a
precondition, so it never removes a slot another node took over in between. Every call has a
timeout, and client or transport errors leave as ``KubeError`` (see ``kube_api.kube_errors``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from prefetcher.adapters.kube_api import Collection, KubeStatusError, kube_errors, list_items, micro_time
from prefetcher.ports import Clock, LeaseState

LABEL = "modelcar-prefetcher.io/pacing"
_CONFLICT_OR_GONE = (404, 409)


class LeaseStore:
    """The pacing Leases of one namespace; see the module docstring."""

    def __init__(self, api: Any, *, namespace: str, clock: Clock, timeout_seconds: float = 10.0) -> None:
        self._leases: Any = client.CoordinationV1Api(api)
        self._namespace, self._clock, self._timeout = namespace, clock, timeout_seconds

    def list(self) -> dict[str, LeaseState]:
        """Every pacing Lease of the namespace, by name."""
        slots = Collection(
            f"leases in {self._namespace}",
            self._leases.list_namespaced_lease,
            (("namespace", self._namespace), ("label_selector", f"{LABEL}=slot")),
        )
        states = (_state(item) for item in list_items(slots, timeout_seconds=self._timeout))
        return {s.name: s for s in states}

    def take(self, name: str, *, holder: str, duration_seconds: float, version: str | None) -> str | None:
        """Hold ``name`` (create it when ``version`` is None, else update that version); its new
        version, or None when another node was first."""
        body = self._body(name, holder, duration_seconds, version)
        try:
            with kube_errors(f"taking lease {self._namespace}/{name}"):
                if version is None:
                    response = self._leases.create_namespaced_lease(
                        self._namespace, body, _preload_content=False, _request_timeout=self._timeouts
                    )
                else:
                    response = self._leases.replace_namespaced_lease(
                        name, self._namespace, body, _preload_content=False, _request_timeout=self._timeouts
                    )
                try:
                    return _state(json.loads(response.data)).version
                finally:
                    response.release_conn()
        except KubeStatusError as error:
            # 404 on an update: released meanwhile. On a create it means no such namespace: an error.
            if error.status == 409 or (error.status == 404 and version is not None):
                return None
            raise

    def release(self, name: str, *, version: str) -> None:
        """Delete ``name`` unless it changed since ``version`` (then another node holds it now)."""
        options = {"preconditions": {"resourceVersion": version}}
        try:
            with kube_errors(f"releasing lease {self._namespace}/{name}"):
                response = self._leases.delete_namespaced_lease(
                    name,
                    self._namespace,
                    body=options,
                    _preload_content=False,
                    _request_timeout=self._timeouts,
                )
                response.release_conn()
        except KubeStatusError as error:
            if error.status not in _CONFLICT_OR_GONE:
                raise

    @property
    def _timeouts(self) -> tuple[float, float]:
        return (self._timeout, self._timeout)

    def _body(self, name: str, holder: str, duration_seconds: float, version: str | None) -> dict[str, Any]:
        now = micro_time(self._clock.now())
        metadata: dict[str, Any] = {"name": name, "labels": {LABEL: "slot"}}
        if version is not None:
            metadata["resourceVersion"] = version
        spec = {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(int(duration_seconds), 1),
            "renewTime": now,
        }
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def _state(item: Mapping[str, Any]) -> LeaseState:
    metadata, spec = item.get("metadata") or {}, item.get("spec") or {}
    return LeaseState(
        name=str(metadata.get("name", "")),
        holder=str(spec.get("holderIdentity") or ""),
        version=str(metadata.get("resourceVersion", "")),
        duration_seconds=float(spec.get("leaseDurationSeconds") or 0),
    )
