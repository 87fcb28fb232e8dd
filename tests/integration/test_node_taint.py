"""The node adapters against a real kube-apiserver: what they remove, what they say, how they fail."""

from __future__ import annotations

import json
import logging

import pytest

from prefetcher.adapters.kube_api import api_client
from prefetcher.adapters.node_status import NodeSummary
from prefetcher.adapters.node_taint import StartupTaint
from prefetcher.errors import KubeError
from prefetcher.testing.fakes import FakeClock
from tests.support.apiserver import ApiServer
from tests.support.kube_objects import create_node
from tests.support.registry import free_port

pytestmark = pytest.mark.integration
KEY = "modelcar-prefetcher.io/warming"


def test_only_the_startup_taint_is_removed_and_a_node_without_it_is_not_reported_as_untainted(
    apiserver: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    tainted, bare = create_node(apiserver), create_node(apiserver)
    apiserver.kubectl("taint", "node", tainted, f"{KEY}:NoSchedule", "example.com/other=x:NoSchedule")
    api = api_client(kubeconfig=str(apiserver.kubeconfig))
    try:
        with caplog.at_level(logging.INFO, logger="prefetcher.adapters.node_taint"):
            for node in (tainted, bare):
                taint = StartupTaint(api, node_name=node, key=KEY, deadline_seconds=60, clock=FakeClock())
                taint.after_pass(settled=True)
                assert taint.removed
    finally:
        api.close()

    # A node that never had the taint (say, a provisioner adding another key) is not "removed".
    assert [r.getMessage() for r in caplog.records] == [
        f"start-up taint {KEY} removed from node {tainted} (models warm)",
        f"start-up taint {KEY} is not on node {bare}; nothing to remove",
    ]
    taints = json.loads(apiserver.kubectl("get", "node", tainted, "-o", "json"))["spec"]["taints"]
    assert [(t["key"], t.get("value"), t["effect"]) for t in taints] == [
        ("example.com/other", "x", "NoSchedule")
    ]


def test_a_transport_error_is_a_kube_error_that_the_loop_survives(apiserver: ApiServer) -> None:
    # urllib3's errors pass through the Kubernetes client untranslated; the after-pass hooks must
    # still raise only KubeError, which the reconcile loop logs and retries.
    node = create_node(apiserver)
    api = api_client(kubeconfig=str(apiserver.kubeconfig))
    api.configuration.host = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    api.configuration.retries = 0
    try:
        taint = StartupTaint(api, node_name=node, key=KEY, deadline_seconds=60, clock=FakeClock())
        with pytest.raises(KubeError, match=f"removing taint {KEY} from node {node}"):
            taint.after_pass(settled=True)
        assert not taint.removed
        with pytest.raises(KubeError, match=f"annotating node {node}"):
            NodeSummary(api, node_name=node).publish({"warm": 1})
    finally:
        api.close()
