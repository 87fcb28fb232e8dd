"""The cluster view on a real kube-apiserver, from what real agents publish on their Nodes.

Agents (``prefetcher agent`` processes, one per Node created through the API, all on the session's
containerd) write their summaries; ``prefetcher status`` and ``kubectl prefetcher status`` (the
built kubectl finding the ``kubectl-prefetcher`` console script on PATH) read them back as a user
bound to the optional read-only ClusterRole and nothing else, and running agents, authenticated as
deployed (the shipped ServiceAccount's RBAC, Pod-bound tokens, the node policy), elect one of them
to record ``ModelWarmth`` Events on the InferenceService.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from prefetcher.adapters.cluster_view import node_summaries
from prefetcher.adapters.kube_api import api_client
from prefetcher.adapters.node_status import ANNOTATION as SUMMARY
from prefetcher.adapters.warmth_report import LEASE_NAME, LeaderLease
from prefetcher.core.warmth import Warmth, isvc_warmth
from prefetcher.testing.fakes import FakeClock
from tests.support.agent_process import agent_config, run_cluster_agent, running_agent
from tests.support.agent_rbac import DEPLOY, agent_pod_on, agent_token, apply_agent_rbac, token_kubeconfig
from tests.support.apiserver import ApiServer
from tests.support.containerd import RunningContainerd
from tests.support.fleet import cluster_status
from tests.support.kube_objects import apply_isvc, create_node, gpu_predictor, unique
from tests.support.oci import push_modelcar
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration
MISSING = "oci://127.0.0.1:9/models/missing@sha256:" + "0" * 64  # nothing listens on port 9
AGENT_NAMESPACE = "modelcar-prefetcher"
BIN = Path(sys.executable).parent
STATUS_ROLE = Path(__file__).resolve().parents[2] / "deploy/agent/optional/status-reader-role.yaml"


def status_reader(apiserver: ApiServer) -> Path:
    """A kubeconfig of a user bound to the optional read-only status ClusterRole, and nothing else."""
    user = unique("status-reader")
    apiserver.kubectl("apply", "-f", str(STATUS_ROLE))
    role = "--clusterrole=modelcar-prefetcher-status-reader"
    apiserver.kubectl("create", "clusterrolebinding", user, role, f"--user={user}")
    kubeconfig = apiserver.write_kubeconfig(user)
    kubectl = [str(apiserver.assets_dir / "kubectl"), f"--kubeconfig={kubeconfig}", "auth", "can-i"]
    for verb in ("patch", "update", "delete"):  # read only
        denied = subprocess.run(
            [*kubectl, verb, "nodes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert denied.returncode == 1, (verb, denied.stdout, denied.stderr)
    return kubeconfig


def rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["model"]: m for m in doc["models"]}


def test_status_counts_each_model_by_node_state_in_json_tables_and_through_kubectl(
    apiserver: ApiServer,
    isvc_crd: str,
    containerd: RunningContainerd,
    registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    image = push_modelcar(registry, "models/status-llm", model_size_bytes=1024**2, seed=91)
    namespace = unique("ns")
    apiserver.create_namespace(namespace)
    gpu_nodes = [create_node(apiserver, gpus=1) for _ in range(2)]
    cpu_node = create_node(apiserver)
    apply_isvc(apiserver, namespace, "llm", gpu_predictor(image.uri))
    apply_isvc(apiserver, namespace, "lost", {"model": {"storageUri": MISSING}})
    for node in [*gpu_nodes, cpu_node]:  # "lost" fails on every node
        run_cluster_agent(apiserver, containerd, registry, tmp_path, node, namespace=namespace)

    reader = status_reader(apiserver)
    doc = json.loads(cluster_status(reader, "-n", namespace, "-o", "json"))
    models = rows(doc)
    assert set(models) == {image.ref, MISSING.removeprefix("oci://")}, models
    llm, lost = models[image.ref], models[MISSING.removeprefix("oci://")]
    assert llm["fits"] == 2 and sorted(llm["warm"]) == sorted(gpu_nodes), llm  # not on the CPU node
    assert llm["inferenceServices"] == [f"{namespace}/llm"]
    assert lost["fits"] == 3 and lost["warm"] == [], lost
    # The failed lookup is "unresolved"; a one-shot run that carries on to pull another model
    # reports it as "backoff" in its last pass.
    assert sum(lost["reasons"].values()) == 3 and set(lost["reasons"]) <= {"unresolved", "backoff"}, lost
    assert sorted(lost["skipped"]) == sorted([*gpu_nodes, cpu_node])
    assert {"name": f"{namespace}/llm", "warmNodes": 2, "eligibleNodes": 2} in doc["inferenceServices"]
    assert {"name": f"{namespace}/lost", "warmNodes": 0, "eligibleNodes": 3} in doc["inferenceServices"]

    wide = cluster_status(reader, "-n", namespace, "-o", "wide").splitlines()
    assert wide[0].split() == [
        "MODEL", "FITS", "WARM", "PULLING", "WAITING", "SKIPPED", "REASONS", "INFERENCESERVICES", "NOT-WARM",
    ]  # fmt: skip
    llm_row = next(line.split() for line in wide if line.startswith(image.ref))
    assert llm_row[1:8] == ["2", "2", "0", "0", "0", "-", f"{namespace}/llm"] and llm_row[8] == "-"
    lost_row = next(line.split() for line in wide if line.startswith("127.0.0.1:9/"))
    assert lost_row[1:6] == ["3", "0", "0", "0", "3"] and "unresolved=" in lost_row[6]
    assert all(f"{node}(skipped)" in lost_row[8] for node in [*gpu_nodes, cpu_node])

    env = os.environ | {"PATH": f"{BIN}:{apiserver.assets_dir}", "KUBECONFIG": str(reader)}
    kubectl = [str(apiserver.assets_dir / "kubectl"), "prefetcher", "status", "-n", namespace]
    result = subprocess.run(kubectl, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert f"{namespace}/llm    warm on 2 of 2 eligible nodes" in result.stdout, result.stdout
    assert f"{namespace}/lost   warm on 0 of 3 eligible nodes" in result.stdout, result.stdout


def warmth_events(apiserver: ApiServer, namespace: str, isvc: str) -> list[dict[str, Any]]:
    events = json.loads(apiserver.kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
    return [e for e in events if e["reason"] == "ModelWarmth" and e["involvedObject"]["name"] == isvc]


def test_one_elected_agent_records_warmth_events_only_on_change_and_another_takes_over(
    apiserver: ApiServer,
    isvc_crd: str,
    containerd: RunningContainerd,
    registry: RunningRegistry,
    tmp_path: Path,
    *,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = push_modelcar(registry, "models/status-events", model_size_bytes=1024**2, seed=92)
    # The agents run as deployed: the shipped ServiceAccount with its RBAC, tokens bound to a Pod on
    # each node, and the node policy that holds each agent to its own Node.
    apply_agent_rbac(apiserver)
    apiserver.kubectl("apply", "-n", AGENT_NAMESPACE, "-f", str(DEPLOY / "serviceaccount.yaml"))
    apiserver.kubectl("apply", "-f", str(DEPLOY / "node-policy.yaml"))
    monkeypatch.setenv("POD_NAMESPACE", AGENT_NAMESPACE)
    namespace = unique("ns")
    apiserver.create_namespace(namespace)
    nodes = [create_node(apiserver, gpus=1) for _ in range(2)]
    apply_isvc(apiserver, namespace, "llm", gpu_predictor(image.uri))
    with ExitStack() as stack:
        agents = {}
        for node in nodes:
            config = tmp_path / f"agent-{node}.yaml"
            (tmp_path / node).mkdir()
            settings = agent_config(
                containerd,
                [registry.host],
                tmp_path / node,
                kubernetes={"namespaces": [namespace], "warmthEventsPeriodSeconds": 1},
            )
            config.write_text(json.dumps(settings))
            log_file = tmp_path / f"{node}.log"
            token = agent_token(
                apiserver, "--bound-object-kind=Pod", f"--bound-object-name={agent_pod_on(apiserver, node)}"
            )
            identity = token_kubeconfig(apiserver, token, unique("agent-token"))
            agents[node] = stack.enter_context(
                running_agent(config, node=node, kubeconfig=identity, log_file=log_file)
            )

        def warm_on_both() -> list[dict[str, Any]] | None:
            events = warmth_events(apiserver, namespace, "llm")
            done = any(e["message"] == "warm on 2 of 2 eligible nodes" for e in events)
            return events if done else None

        first = agents[nodes[0]].wait(warm_on_both, what="warm on 2 of 2", timeout_seconds=120)
        reporters = {e["reportingInstance"] for e in first}
        assert len(reporters) == 1, first  # a single writer
        assert all(e["count"] == 1 for e in first), first  # recorded on change only, never repeated
        assert len({e["message"] for e in first}) == len(first), first
        lease = json.loads(
            apiserver.kubectl(
                "get", "lease", "modelcar-prefetcher-warmth-reporter", "-n", AGENT_NAMESPACE, "-o", "json"
            )
        )
        (reporter,) = reporters
        assert lease["spec"]["holderIdentity"] == reporter

        agents[reporter].process.terminate()  # it gives the Lease up on its way out
        agents[reporter].process.wait(timeout=30)
        (other,) = set(nodes) - {reporter}

        def taken_over() -> list[dict[str, Any]] | None:
            events = warmth_events(apiserver, namespace, "llm")
            return [e for e in events if e["reportingInstance"] == other] or None

        (announced,) = agents[other].wait(taken_over, what="the other agent reporting", timeout_seconds=60)
        assert announced["message"] == "warm on 2 of 2 eligible nodes"  # its summary stays on the node


def annotate(apiserver: ApiServer, node: str, key: str, value: str) -> None:
    """Write an annotation as anyone with patch rights on the Node could (read from stdin: any size)."""
    patch = json.dumps({"metadata": {"annotations": {key: value}}})
    apiserver.kubectl("patch", "node", node, "--type=merge", "--patch-file=/dev/stdin", input=patch)


JUNK_SUMMARIES = {
    "not JSON": "{models: oops",
    "an array": "[1, 2]",
    "lying types": json.dumps({"models": {"r": {"state": "warm", "isvcs": 5}}}),
    "huge and nested too deeply": "[" * 100_000,
    "escapes": '{"models": {"r\\ud800\\u001b[2J": {"state": "warm", "isvcs": ["x/y"]}}}',
}


def test_nodes_with_junk_summaries_are_named_with_a_reason_and_the_others_still_count(
    apiserver: ApiServer,
) -> None:
    namespace = unique("ns")
    ref = f"registry.test/models/{namespace}@sha256:" + "7" * 64
    good = [create_node(apiserver) for _ in range(2)]
    summary = {"models": {ref: {"state": "warm", "isvcs": [f"{namespace}/llm"]}}}
    for node in good:
        annotate(apiserver, node, SUMMARY, json.dumps(summary))
    bad = {create_node(apiserver): text for text in JUNK_SUMMARIES.values()}
    for node, text in bad.items():
        annotate(apiserver, node, SUMMARY, text)
    reader = status_reader(apiserver)

    doc = json.loads(cluster_status(reader, "-o", "json"))
    (row,) = (m for m in doc["models"] if m["model"] == ref)
    assert sorted(row["warm"]) == sorted(good) and row["fits"] == 2, row
    reasons = {node: doc["unreadableSummaries"].get(node) for node in bad}
    assert all(reasons.values()), reasons
    assert {"name": f"{namespace}/llm", "warmNodes": 2, "eligibleNodes": 2} in doc["inferenceServices"]
    for output in ("table", "wide"):
        lines = cluster_status(reader, "-o", output).splitlines()
        assert any(line.startswith(ref[:40]) and line.split()[1:3] == ["2", "2"] for line in lines), lines
        for node, reason in reasons.items():
            assert f"node {node}: summary unreadable: {reason}" in lines, lines

    # The warmth reporter reads the same way: the good nodes count, the junk ones nowhere.
    admin = api_client(kubeconfig=str(apiserver.kubeconfig))
    try:
        warmth = isvc_warmth(node_summaries(admin))
    finally:
        admin.close()
    assert warmth[f"{namespace}/llm"] == Warmth(2, 2)


def test_a_foreign_reporter_lease_claiming_68_years_holds_it_three_durations_at_most(
    apiserver: ApiServer,
) -> None:
    namespace = unique("ns")
    apiserver.create_namespace(namespace)
    spec = {"holderIdentity": "intruder", "leaseDurationSeconds": 2_147_483_647}
    spec["renewTime"] = "2999-01-01T00:00:00.000000Z"
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": LEASE_NAME}}
    apiserver.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(lease | {"spec": spec}))
    admin, clock = api_client(kubeconfig=str(apiserver.kubeconfig)), FakeClock()
    try:
        reporter = LeaderLease(admin, namespace=namespace, holder="node-a", duration_seconds=30, clock=clock)
        assert not reporter.hold()
        clock.advance(3 * 30 - 1)
        assert not reporter.hold()
        clock.advance(1)
        assert reporter.hold()
    finally:
        admin.close()
