"""Removal of this node's start-up taint once its models are warm (or a deadline passes).

A node autoscaler or provisioner adds the taint to new nodes; the agent removes it when every
model desired for the node is warm or skipped for a stated reason, so serving pods land only on
warm nodes. The agent only ever patches the node named by ``node_name`` (RBAC cannot say "own
node", so the code holds the line), with a JSON Patch ``test`` op so a concurrent change to the
taints makes the patch fail instead of being overwritten.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client

from prefetcher.adapters.kube_api import kube_errors
from prefetcher.ports import Clock

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 10


class StartupTaint:
    """Call ``after_pass`` after every reconcile pass; it removes the taint once."""

    def __init__(self, api: Any, *, node_name: str, key: str, deadline_seconds: float, clock: Clock) -> None:
        self._api = api
        self._core = client.CoreV1Api(api)
        self._node, self._key = node_name, key
        self._deadline = clock.monotonic() + deadline_seconds
        self._clock = clock
        self.removed = not key

    def after_pass(self, *, settled: bool, **_: object) -> None:
        """Remove the taint when ``settled`` (nothing left to pull) or past the deadline."""
        if self.removed:
            return
        late = self._clock.monotonic() >= self._deadline
        if not settled and not late:
            return
        # Every client error, transport ones included (urllib3 lets them through), is a KubeError
        # the reconcile loop logs and retries: none may end the agent.
        with kube_errors(f"removing taint {self._key} from node {self._node}"):
            present = self._remove()
        self.removed = True
        if not present:  # e.g. a provisioner that adds another key: say so rather than claim removal
            log.info("start-up taint %s is not on node %s; nothing to remove", self._key, self._node)
            return
        why = "deadline reached before all models were warm" if late and not settled else "models warm"
        log.info("start-up taint %s removed from node %s (%s)", self._key, self._node, why)

    def _remove(self) -> bool:
        """Remove the taint from the node; False when the node does not have it."""
        node = self._core.read_node(self._node, _request_timeout=TIMEOUT_SECONDS)
        taints = self._api.sanitize_for_serialization((node.spec.taints if node.spec else None) or [])
        keep = [t for t in taints if t.get("key") != self._key]
        if len(keep) == len(taints):
            return False
        patch = [
            {"op": "test", "path": "/spec/taints", "value": taints},
            {"op": "replace", "path": "/spec/taints", "value": keep},
        ]
        self._core.patch_node(self._node, patch, _request_timeout=TIMEOUT_SECONDS)
        return True
