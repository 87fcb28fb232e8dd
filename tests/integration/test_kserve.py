"""KServe itself: its real controller and webhooks wire the pods, the agent from ``deploy/`` warms them.

One KServe v0.20 control plane (``tests.support.kserve``: KServe's manager, CRDs, ConfigMap and
webhook configurations from its own module) serves every test of this module, on the real
``cluster`` with a kubelet node of its own where the agent runs as installed from
``deploy/agent``. The serving runtime is a ``ServingRuntime`` whose container is busybox's
``httpd`` serving ``/mnt/models`` on the host network (there is no CNI); its readiness probe fetches
the model's ``config.json``, so Ready means the server reads the weights through KServe's modelcar
wiring, and the test reads the same file from it.

"Warmed before the pod lands" is shown the way kubelet reports it: the predictor's pod is held by a
scheduling gate (an ordinary field of the InferenceService's pod spec that KServe copies to the
Deployment) until the agent reported ``Prefetched``; once released, kubelet's events for the model
image say "already present on machine" and there is no ``Pulling`` event for it. The start-up taint
test shows the same without a gate: the node is tainted until the agent has the model.

Our webhook is registered beside KServe's in every test namespace; KServe's configuration name sorts
first, so ours sees each pod after KServe wired it and must leave it as KServe made it.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prefetcher.adapters.cri import CriImageRuntime
from tests.support.agent_deploy import (
    IMAGE_FS_MB,
    NAMESPACE,
    STARTUP_TAINT,
    agent_pod,
    events,
    installed,
    ready_agent,
    timestamp,
    write_overlay,
)
from tests.support.agent_image import AgentImage
from tests.support.cluster import Cluster
from tests.support.kserve import KServe, start_kserve
from tests.support.kserve_workloads import (
    SMALL,
    inference_service,
    model_predictor,
    push_model,
    server_container,
    serving_runtime,
)
from tests.support.kubelet import KubeletOptions
from tests.support.node import NodeCluster, condition, start_node
from tests.support.oci import (
    PushedImage,
    busybox_layer,
    host_platform,
    push_image,
    push_sandbox_image,
)
from tests.support.polling import eventually
from tests.support.registry import RunningRegistry, free_port
from tests.support.service_route import routed_service
from tests.support.webhook import webhook_process

pytestmark = pytest.mark.integration

ISVC_LABEL = "serving.kserve.io/inferenceservice"
# KServe's modelcar sidecar arguments (pkg/utils/storage.go, modelcarCommand, in v0.20).
KSERVE_MODELCAR_ARGS = ["sh", "-c", "ln -sf /proc/$$$$/root/models /mnt/models && sleep infinity"]
WAIT_SECONDS = 180.0


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kserve(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServe]:
    with start_kserve(cluster.apiserver, tmp_path_factory.mktemp("kserve")) as running:
        yield running


@pytest.fixture(scope="module")
def server_image(registry: RunningRegistry) -> PushedImage:
    """busybox alone: the runtime's container runs its ``httpd``."""
    return push_image(
        registry,
        "kserve-tiny-server",
        layers=(busybox_layer(),),
        tag="v1",
        platform=host_platform(),
        cmd=("/bin/sh",),
    )


@contextlib.contextmanager
def agent_node(
    *,
    cluster: Cluster,
    registry: RunningRegistry,
    agent_image: AgentImage,
    workdir: Path,
    options: KubeletOptions,
    settings: dict[str, str] | None = None,
) -> Iterator[tuple[NodeCluster, str]]:
    """A node with the agent installed from ``deploy/agent``; yields it and the agent pod's name."""
    sandbox = push_sandbox_image(registry)
    with start_node(
        cluster,
        workdir / "node",
        registry_host=registry.host,
        sandbox_image=sandbox.tag_ref,
        image_fs_mb=IMAGE_FS_MB,
        options=options,
    ) as node:
        overlay = write_overlay(
            workdir / "overlay",
            node,
            image=agent_image,
            registry_host=registry.host,
            state_dir=workdir / "state",
            settings=settings,
        )
        with installed(node, overlay):
            yield node, agent_pod(node)["metadata"]["name"]


@pytest.fixture(scope="module")
def route(cluster: Cluster) -> Iterator[None]:
    """In-cluster clients (the agents) reach the API server, for the whole module."""
    with routed_service(cluster.apiserver.port):
        yield


@pytest.fixture(scope="module")
def warm_node(
    *,
    cluster: Cluster,
    kserve: KServe,
    route: None,
    registry: RunningRegistry,
    agent_image: AgentImage,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NodeCluster]:
    """The module's node, its agent Ready (deleted models leave after 5 s, not an hour)."""
    workdir = tmp_path_factory.mktemp("warm-node")
    settings = {"  graceSeconds": "5.0"}
    with agent_node(
        cluster=cluster,
        registry=registry,
        agent_image=agent_image,
        workdir=workdir,
        options=KubeletOptions(),
        settings=settings,
    ) as (node, _):
        ready_agent(node)
        yield node


# --- InferenceService shapes -----------------------------------------------------------------


# Each shape: (name, a function of (uri, second uri, server image, port, second port) -> spec).
Shape = Callable[[list[str], str, list[int]], dict[str, Any]]


def shape_model(uris: list[str], image: str, ports: list[int]) -> dict[str, Any]:
    return {"predictor": model_predictor(uris[0])}


def shape_framework(uris: list[str], image: str, ports: list[int]) -> dict[str, Any]:
    return {
        "predictor": {"sklearn": {"storageUri": uris[0], "resources": {"requests": SMALL, "limits": SMALL}}}
    }


def shape_container_env(uris: list[str], image: str, ports: list[int]) -> dict[str, Any]:
    env = [{"name": "STORAGE_URI", "value": uris[0]}]
    return {"predictor": {"containers": [server_container(image, ports[0], env=env)]}}


def shape_storage_uris(uris: list[str], image: str, ports: list[int]) -> dict[str, Any]:
    model = {"modelFormat": {"name": "tiny"}, "resources": {"requests": SMALL, "limits": SMALL}}
    return {"predictor": {"model": model, "storageUris": [{"uri": uris[0], "mountPath": "/mnt/models"}]}}


def shape_transformer(uris: list[str], image: str, ports: list[int]) -> dict[str, Any]:
    env = [{"name": "STORAGE_URI", "value": uris[1]}]
    transformer = {"containers": [server_container(image, ports[1], env=env)]}
    return {"predictor": model_predictor(uris[0]), "transformer": transformer}


@dataclass(frozen=True)
class Case:
    shape: Shape
    components: tuple[str, ...] = ("predictor",)


CASES = {
    "model-storageUri": Case(shape_model),
    "legacy-framework": Case(shape_framework),
    "container-STORAGE_URI": Case(shape_container_env),
    "storageUris": Case(shape_storage_uris),
    "transformer": Case(shape_transformer, ("predictor", "transformer")),
}


# --- observations ----------------------------------------------------------------------------


def component_pods(node: NodeCluster, namespace: str, name: str, component: str) -> list[dict[str, Any]]:
    selector = f"{ISVC_LABEL}={name},component={component}"
    pods: list[dict[str, Any]] = node.get("pods", "-n", namespace, "-l", selector)["items"]
    return pods


def kserve_deployment(node: NodeCluster, namespace: str, name: str, component: str) -> dict[str, Any]:
    """The Deployment KServe's controller made for ``component``, owned by the InferenceService."""

    def made() -> dict[str, Any] | None:
        items = node.get("deployments", "-n", namespace)["items"]
        for deployment in items:
            if deployment["metadata"]["name"] == f"{name}-{component}":
                return dict(deployment)
        return None

    deployment = eventually(
        made, timeout_seconds=WAIT_SECONDS, what=f"KServe's Deployment {name}-{component}"
    )
    owners = deployment["metadata"].get("ownerReferences", [])
    assert [(o["kind"], o["name"]) for o in owners] == [("InferenceService", name)], owners
    return deployment


def one_pod(node: NodeCluster, namespace: str, name: str, component: str) -> dict[str, Any]:
    return eventually(
        lambda: (component_pods(node, namespace, name, component) or [None])[0],
        timeout_seconds=WAIT_SECONDS,
        what=f"a {component} pod of {name}",
    )


def prefetched(node: NodeCluster, namespace: str, name: str, ref: str) -> dict[str, Any]:
    """The agent's ``Prefetched`` Event on the InferenceService for ``ref``."""

    def found() -> dict[str, Any] | None:
        selector = f"involvedObject.kind=InferenceService,involvedObject.name={name},reason=Prefetched"
        return next((e for e in events(node, namespace, selector) if ref in e["message"]), None)

    return eventually(found, timeout_seconds=WAIT_SECONDS, what=f"the agent's Prefetched Event for {ref}")


def release(node: NodeCluster, namespace: str, pod: str) -> None:
    patch = [{"op": "remove", "path": "/spec/schedulingGates"}]
    node.kubectl("patch", "pod", "-n", namespace, pod, "--type=json", "-p", json.dumps(patch))


def kubelet_pull_events(node: NodeCluster, namespace: str, pod: str, ref: str) -> dict[str, list[str]]:
    """Messages of kubelet's ``Pulled`` and ``Pulling`` events for ``ref`` on ``pod``."""
    found: dict[str, list[str]] = {"Pulled": [], "Pulling": []}
    for reason, messages in found.items():
        for event in events(node, namespace, f"involvedObject.name={pod},reason={reason}"):
            if ref in event["message"]:
                messages.append(event["message"])
    return found


def served(port: int, path: str = "/config.json") -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return bytes(answer.read())


def webhook_outcomes(port: int, ca_file: Path) -> dict[str, float]:
    """``prefetcher_webhook_requests_total`` by outcome, scraped from our webhook."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=10, context=context) as answer:
        text = answer.read().decode()
    outcomes: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("prefetcher_webhook_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
            outcomes[outcome] = float(value)
    return outcomes


def containers(pod: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["spec"].get(key, [])}


def assert_kserve_wiring(pod: dict[str, Any], ref: str) -> None:
    """The pod is wired exactly once, as KServe v0.20 wires a modelcar (kserve-compat.md)."""
    main, init = containers(pod, "containers"), containers(pod, "initContainers")
    modelcars = [n for n in (*main, *init) if n.startswith("modelcar") and n != "modelcar-init"]
    assert modelcars == ["modelcar"], (list(main), list(init))
    sidecar = main["modelcar"]
    assert (sidecar["image"], sidecar.get("command"), sidecar["args"]) == (ref, None, KSERVE_MODELCAR_ARGS)
    assert pod["spec"]["shareProcessNamespace"] is True
    assert init["modelcar-init"]["image"] == ref
    server = main["kserve-container"]
    assert {"name": "MODEL_INIT_MODE", "value": "async"} in server.get("env", [])
    assert server["securityContext"]["runAsUser"] == 1010
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes["kserve-provision-location"]


# --- tests -----------------------------------------------------------------------------------


@contextlib.contextmanager
def namespace_with_webhook(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A fresh namespace with our webhook registered for it beside KServe's; yields (name, port)."""
    namespace = f"ks-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(namespace)
    with webhook_process(cluster.apiserver, tmp_path / "webhook", namespace=namespace) as ours:
        yield namespace, ours.port


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_kserve_wires_the_pod_and_the_agent_had_the_model_before_it_was_bound(
    *,
    case: Case,
    cluster: Cluster,
    kserve: KServe,
    warm_node: NodeCluster,
    registry: RunningRegistry,
    server_image: PushedImage,
    tmp_path: Path,
) -> None:
    node = warm_node
    name = "tiny"
    ports = [free_port(), free_port()]
    models = [push_model(registry, f"{name}-{uuid.uuid4().hex[:6]}-{i}") for i in range(len(case.components))]
    uris = [m.uri for m in models] + [models[0].uri]
    with namespace_with_webhook(cluster, tmp_path) as (namespace, webhook_port):
        node.kubectl(
            "apply", "-f", "-", input=json.dumps(serving_runtime(namespace, server_image.ref, ports[0]))
        )
        spec = case.shape(uris, server_image.ref, ports)
        node.kubectl(
            "apply", "-f", "-", input=json.dumps(inference_service(namespace, name, spec, node, gated=True))
        )
        try:
            for component, model, port in zip(case.components, models, ports, strict=False):
                kserve_deployment(node, namespace, name, component)
                pod = one_pod(node, namespace, name, component)
                pod_name = pod["metadata"]["name"]
                assert condition(pod, "PodScheduled").get("reason") == "SchedulingGated", pod["status"]
                prefetched(node, namespace, name, model.image.ref)
                release(node, namespace, pod_name)
                ready = node.wait_pod_ready(namespace, pod_name, timeout_seconds=WAIT_SECONDS)
                assert_kserve_wiring(ready, model.image.ref)
                pulls = kubelet_pull_events(node, namespace, pod_name, model.image.ref)
                assert pulls["Pulling"] == [], pulls
                assert pulls["Pulled"], pulls
                assert all("already present on machine" in m for m in pulls["Pulled"]), pulls
                assert served(port) == model.config
            assert webhook_outcomes(webhook_port, cluster.apiserver.ca_file).get("unchanged", 0) >= len(
                case.components
            )
        finally:
            node.kubectl("delete", "inferenceservice", "-n", namespace, name, "--wait=true", "--timeout=60s")
            eventually(
                lambda: not node.get("pods", "-n", namespace, "-l", ISVC_LABEL)["items"],
                timeout_seconds=WAIT_SECONDS,
                what=f"the pods of {namespace}/{name} gone",
            )


# --- KServe's other OCI modes ----------------------------------------------------------------

FAILING_WAITS = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImagePull",
        "ImagePullBackOff",
        "CreateContainerError",
        "CreateContainerConfigError",
        "InvalidImageName",
    }
)
SETTLE_SECONDS = 150.0
# KServe v0.20 resolves the OCI mode from ``ociModelMode`` first, then from the older switches
# (pkg/types/config.go, ResolveOciModelMode): all three must be off for no OCI mode at all.
MODELCAR_OFF = {"enableModelcar": False, "enableOciModelSupport": False, "ociModelMode": ""}
# busybox httpd when the model directory does not exist.
NO_MODEL_DIR = "can't change directory to '/mnt/models'"


@dataclass(frozen=True)
class Outcome:
    """What became of one component: who wired its pod, whether the agent warmed it, whether it serves.

    ``wired_by``: ``kserve`` (its modelcar), ``ours``, ``storage-initializer``, ``image-volume``,
    ``none``, or ``refused`` (no pod: an admission webhook denied it; ``detail`` has the message).
    """

    wired_by: str
    warmed: bool
    serves: bool
    detail: str


def wiring_of(pod: dict[str, Any]) -> str:
    """Who wired ``pod``, judged by what its spec holds (see ``Outcome``)."""
    main, init = containers(pod, "containers"), containers(pod, "initContainers")
    if "modelcar" in main and main["modelcar"].get("args") == KSERVE_MODELCAR_ARGS:
        return "kserve"
    if "modelcar" in main or "modelcar" in init:
        return "ours"
    if "storage-initializer" in init:
        return "storage-initializer"
    if any("image" in volume for volume in pod["spec"].get("volumes", [])):
        return "image-volume"
    return "none"


def settle(node: NodeCluster, namespace: str, name: str, component: str) -> tuple[str, bool, str]:
    """(wiring, serves, detail) once the component's pod is Ready or plainly cannot become so."""

    def settled() -> tuple[str, bool, str] | None:
        pods = component_pods(node, namespace, name, component)
        if not pods:
            refused = events(node, namespace, "reason=FailedCreate")
            mine = [
                e["message"] for e in refused if e["involvedObject"]["name"].startswith(f"{name}-{component}")
            ]
            return ("refused", False, mine[-1]) if mine else None
        pod = pods[0]
        if condition(pod, "Ready").get("status") == "True":
            return wiring_of(pod), True, "Ready"
        statuses = pod["status"].get("initContainerStatuses", []) + pod["status"].get("containerStatuses", [])
        for status in statuses:
            waiting = status.get("state", {}).get("waiting", {})
            if waiting.get("reason") in FAILING_WAITS:
                said = node.pod_logs(namespace, pod["metadata"]["name"], status["name"]).strip()
                return wiring_of(pod), False, f"{status['name']}: {waiting['reason']}: {said}"
        return None

    return eventually(settled, timeout_seconds=SETTLE_SECONDS, what=f"{namespace}/{name}-{component} settled")


def observe_modes(
    *,
    cluster: Cluster,
    node: NodeCluster,
    registry: RunningRegistry,
    server_image: PushedImage,
    tmp_path: Path,
    scheme: str,
) -> dict[str, Outcome]:
    """Each shape with ``scheme`` in place of ``oci://``; each component's outcome, keyed by case id.

    One shape at a time, each in a namespace of its own with our webhook registered: the servers
    share the host network, so two runtimes on one port would keep each other's pods Pending.
    """
    outcomes: dict[str, Outcome] = {}
    for case_id, case in CASES.items():
        with namespace_with_webhook(cluster, tmp_path / case_id) as (namespace, _):
            ports = [free_port(), free_port()]
            node.kubectl(
                "apply", "-f", "-", input=json.dumps(serving_runtime(namespace, server_image.ref, ports[0]))
            )
            models = [push_model(registry, f"mode-{uuid.uuid4().hex[:6]}-{i}") for i in range(2)]
            spec = case.shape([m.uri.replace("oci://", scheme, 1) for m in models], server_image.ref, ports)
            isvc = inference_service(namespace, "m", spec, node, gated=False)
            node.kubectl("apply", "-f", "-", input=json.dumps(isvc))
            for component, model in zip(case.components, models, strict=False):
                kserve_deployment(node, namespace, "m", component)
                wiring, serves, detail = settle(node, namespace, "m", component)
                warmed = bool(prefetched(node, namespace, "m", model.image.ref))
                key = case_id if component == "predictor" else f"{case_id}/{component}"
                outcomes[key] = Outcome(wiring, warmed, serves, detail)
            node.kubectl("delete", "inferenceservice", "-n", namespace, "m", "--wait=true", "--timeout=90s")
    return outcomes


def assert_outcomes(outcomes: dict[str, Outcome], expected: dict[str, tuple[str, bool, bool, str]]) -> None:
    """Each component as ``expected``: (wired_by, warmed, serves, a phrase of the detail)."""
    seen = {key: (o.wired_by, o.warmed, o.serves) for key, o in outcomes.items()}
    assert seen == {key: e[:3] for key, e in expected.items()}, outcomes
    for key, (*_, phrase) in expected.items():
        assert phrase in outcomes[key].detail, (key, outcomes[key].detail)


def test_with_kserve_modelcar_off_our_webhook_replaces_kserves_storage_initializer_and_the_pod_serves(
    *,
    cluster: Cluster,
    kserve: KServe,
    warm_node: NodeCluster,
    registry: RunningRegistry,
    server_image: PushedImage,
    tmp_path: Path,
) -> None:
    """With no OCI mode, KServe gives an ``oci://`` pod its storage-initializer (which reads no OCI
    images) on ``/mnt/models``; our webhook replaces it with the modelcar, and the warm model serves.
    ``storageUris[]`` is wired by nobody: KServe skips its OCI sources and sets no annotation."""
    shipped = kserve.storage_initializer()
    kserve.set_storage_initializer(MODELCAR_OFF)
    try:
        outcomes = observe_modes(
            cluster=cluster,
            node=warm_node,
            registry=registry,
            server_image=server_image,
            tmp_path=tmp_path,
            scheme="oci://",
        )
    finally:
        kserve.set_storage_initializer(shipped)
    ours = ("ours", True, True, "Ready")
    assert_outcomes(
        outcomes,
        {
            "model-storageUri": ours,
            "legacy-framework": ours,
            "container-STORAGE_URI": ours,
            "storageUris": ("none", True, False, NO_MODEL_DIR),
            "transformer": ours,
            "transformer/transformer": ours,
        },
    )


def test_oci_native_on_an_api_server_without_image_volumes_is_warmed_but_wired_by_nobody(
    *,
    cluster: Cluster,
    kserve: KServe,
    warm_node: NodeCluster,
    registry: RunningRegistry,
    server_image: PushedImage,
    tmp_path: Path,
) -> None:
    """KServe wires ``oci+native://`` as an image volume; an API server without the ImageVolume
    feature (alpha, off by default, in 1.32) drops image volumes and their mounts from the pod
    (pkg/api/pod/util.go, dropImageVolumes), so the server finds no model. Our webhook leaves
    ``oci+native://`` pods to KServe; the agent warms them all the same."""
    outcomes = observe_modes(
        cluster=cluster,
        node=warm_node,
        registry=registry,
        server_image=server_image,
        tmp_path=tmp_path,
        scheme="oci+native://",
    )
    unwired = ("none", True, False, NO_MODEL_DIR)
    components = ["model-storageUri", "legacy-framework", "container-STORAGE_URI", "storageUris"]
    components += ["transformer", "transformer/transformer"]
    assert_outcomes(outcomes, dict.fromkeys(components, unwired))


# --- last: a node of its own -----------------------------------------------------------------
# Every node's agent is the same DaemonSet (one install per node here, since the nodes' host paths
# differ), so installing on this test's node moves the agent away from ``warm_node`` and removing it
# deletes the install: this test runs after every test that uses ``warm_node``.


def test_a_node_joining_with_the_startup_taint_gets_kserve_pods_only_once_warm_and_evicts_after_delete(
    *,
    cluster: Cluster,
    kserve: KServe,
    route: None,
    registry: RunningRegistry,
    agent_image: AgentImage,
    server_image: PushedImage,
    tmp_path: Path,
) -> None:
    model = push_model(registry, f"taint-{uuid.uuid4().hex[:6]}")
    port, name = free_port(), "tainted"
    options = KubeletOptions(register_with_taints=[STARTUP_TAINT])
    with (
        agent_node(
            cluster=cluster,
            registry=registry,
            agent_image=agent_image,
            workdir=tmp_path,
            options=options,
            settings={"  graceSeconds": "5.0"},
        ) as (node, agent),
        namespace_with_webhook(cluster, tmp_path) as (namespace, _),
        CriImageRuntime(node.endpoint) as runtime,
    ):
        node.kubectl("apply", "-f", "-", input=json.dumps(serving_runtime(namespace, server_image.ref, port)))
        spec = shape_model([model.uri], server_image.ref, [port])
        node.kubectl(
            "apply", "-f", "-", input=json.dumps(inference_service(namespace, name, spec, node, gated=False))
        )
        kserve_deployment(node, namespace, name, "predictor")
        pod_name = one_pod(node, namespace, name, "predictor")["metadata"]["name"]

        def looked() -> tuple[bool, bool, float]:
            """(bound, tainted, when the node was read): the node is read after the pod."""
            bound = bool(node.get("pod", "-n", namespace, pod_name)["spec"].get("nodeName"))
            node_at = time.time()
            taints = node.node()["spec"].get("taints", [])
            return bound, any(t["key"] == STARTUP_TAINT.key for t in taints), node_at

        seen = [looked()]
        eventually(
            lambda: seen.append(looked()) or seen[-1][0],
            timeout_seconds=WAIT_SECONDS,
            what=f"KServe's pod {pod_name} bound",
            interval_seconds=0.0,
        )
        assert seen[0] == (False, True, seen[0][2]), seen[0]
        assert not [s for s in seen if s[0] and s[1]], "bound while the node was tainted"
        last_tainted = max(s[2] for s in seen if s[1])
        ready = node.wait_pod_ready(namespace, pod_name, timeout_seconds=WAIT_SECONDS)
        assert_kserve_wiring(ready, model.image.ref)
        assert timestamp(condition(ready, "PodScheduled")["lastTransitionTime"]) >= int(last_tainted)
        pulls = kubelet_pull_events(node, namespace, pod_name, model.image.ref)
        assert (pulls["Pulling"], bool(pulls["Pulled"])) == ([], True), pulls
        assert all("already present on machine" in m for m in pulls["Pulled"]), pulls
        assert served(port) == model.config
        log = node.pod_logs(NAMESPACE, agent, "agent")
        assert f"start-up taint {STARTUP_TAINT.key} removed from node {node.node_name} (models warm)" in log

        node.kubectl("delete", "inferenceservice", "-n", namespace, name, "--wait=true", "--timeout=60s")
        eventually(
            lambda: runtime.image_status(model.image.ref) is None,
            timeout_seconds=WAIT_SECONDS,
            what=f"the agent evicting {model.image.ref} after the InferenceService was deleted",
        )
        assert not component_pods(node, namespace, name, "predictor")
