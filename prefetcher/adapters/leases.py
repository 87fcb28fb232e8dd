"""Slot Leases (``coordination.k8s.io/v1``) in the agent's namespace, for fleet pull pacing.

Each slot of ``prefetcher.core.pacing`` is one Lease: ``holderIdentity`` is the node that pulls,
``renewTime`` and ``leaseDurationSeconds`` say how long it counts as held. Taking a slot is atomic
on the API server: a create answers 409 when another node created it first, an update carrying
the ``resourceVersion`` that was read answers 409 when anyone wrote it since. Both mean "another
node was first" and come back as ``None``; a release is a delete with the read version as a
precondition, so it never removes a slot another node took over in between. Every call has a
timeout, and client or transport errors leave as ``KubeError`` (see ``kube_api.kube_errors``).

A slot is known by its name (``core.pacing.LEASE_PREFIX``), not by the label this store writes:
a Lease someone else created under a slot's name without the label would otherwise be invisible
to ``list`` while every create of that name answers 409, and the slot would wait for
``fleet.maxWaitSeconds`` on every node. Fields are read as untrusted (``lease_state``): a holder
that is not text reads as none, a duration that is not a number as 0 (which the core reads as
this node's own duration, see ``core.pacing.held_for``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from prefetcher.adapters.kube_api import (
    Collection,
    KubeStatusError,
    discard,
    kube_errors,
    list_items,
    micro_time,
)
from prefetcher.core.pacing import LEASE_PREFIX
from prefetcher.ports import Clock, LeaseState

LABEL = "modelcar-prefetcher.io/pacing"
_CONFLICT_OR_GONE = (404, 409)


class LeaseStore:
    """The pacing Leases of one namespace; see the module docstring."""

    def __init__(self, api: Any, *, namespace: str, clock: Clock, timeout_seconds: float = 10.0) -> None:
        self._leases: Any = client.CoordinationV1Api(api)
        self._namespace, self._clock, self._timeout = namespace, clock, timeout_seconds

    def list(self) -> dict[str, LeaseState]:
        """Every Lease of the namespace named as a pacing slot, labelled or not, by name."""
        namespace = (("namespace", self._namespace),)
        leases = Collection(f"leases in {self._namespace}", self._leases.list_namespaced_lease, namespace)
        states = (lease_state(item) for item in list_items(leases, timeout_seconds=self._timeout))
        return {s.name: s for s in states if s.name.startswith(f"{LEASE_PREFIX}-")}

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
                    return lease_state(json.loads(response.data)).version
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
                discard(response)
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


def lease_state(item: Mapping[str, Any]) -> LeaseState:
    """A Lease as read, whatever its fields hold; see the module docstring."""
    metadata, spec = _mapping(item.get("metadata")), _mapping(item.get("spec"))
    holder, duration = spec.get("holderIdentity"), spec.get("leaseDurationSeconds")
    return LeaseState(
        name=str(metadata.get("name", "")),
        holder=holder if isinstance(holder, str) else "",
        version=str(metadata.get("resourceVersion", "")),
        duration_seconds=_seconds(duration),
    )


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    try:
        return float(value)
    except OverflowError:  # an integer past any float: longer than anything the core accepts
        return math.inf


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
