"""The InferenceService source and the Event recorder against a real kube-apiserver.

Nodes and InferenceServices are created through the API; the source's output is polled with a
deadline until it shows the change, or the test fails with what it showed last.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from prefetcher.adapters.kube import IsvcModelSource, ListWatch, WatchSettings
from prefetcher.adapters.kube_api import (
    Collection,
    EventRecorder,
    KubeEventSink,
    KubeStatusError,
    ObjectRef,
    api_client,
    isvc_collection,
    list_page,
)
from prefetcher.core.backoff import BackoffPolicy
from prefetcher.errors import KubeError
from tests.support.apiserver import ApiServer
from tests.support.kube_objects import apply_isvc, create_node, gpu_predictor, unique
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "cd" * 32
GPU_URI = f"oci://registry.example.com/models/llama@{DIGEST}"
CPU_URI = f"oci://registry.example.com/models/small@{DIGEST}"
FAST = WatchSettings(
    request_timeout_seconds=5.0,
    watch_timeout_seconds=10,  # also exercises watching again from the last resourceVersion
    page_size=2,  # several pages even for a handful of objects
    backoff=BackoffPolicy(base_seconds=0.2, max_seconds=2.0),
)


@pytest.fixture
def namespace(apiserver: ApiServer, isvc_crd: str) -> str:
    name = unique("ns")
    apiserver.create_namespace(name)
    return name


@pytest.fixture
def api(apiserver: ApiServer) -> Iterator[Any]:
    api = api_client(kubeconfig=str(apiserver.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def start_source(api: Any) -> Iterator[Callable[..., IsvcModelSource]]:
    sources: list[IsvcModelSource] = []

    def start(node_name: str, **kwargs: Any) -> IsvcModelSource:
        source = IsvcModelSource(api, node_name=node_name, settings=FAST, **kwargs)
        source.start()
        sources.append(source)
        assert source.wait_synced(30), "source did not list within 30s"
        return source

    yield start
    for source in sources:
        source.stop()


def requested(source: IsvcModelSource, namespace: str) -> set[tuple[str, str]]:
    prefix = f"isvc {namespace}/"
    return {(r.source.removeprefix(prefix), r.uri) for r in source.requests() if r.source.startswith(prefix)}


def test_gpu_model_fits_only_the_node_with_gpu_allocatable(
    apiserver: ApiServer, namespace: str, start_source: Callable[..., IsvcModelSource]
) -> None:
    gpu_node, cpu_node = create_node(apiserver, gpus=1), create_node(apiserver)
    apply_isvc(apiserver, namespace, "llm", gpu_predictor(GPU_URI))
    apply_isvc(apiserver, namespace, "small", {"model": {"storageUri": CPU_URI}, "minReplicas": 0})
    apply_isvc(apiserver, namespace, "s3", {"model": {"storageUri": "s3://bucket/model"}})
    on_gpu = start_source(gpu_node, default_priority=10, scale_to_zero_boost=5)
    on_cpu = start_source(cpu_node)
    both = {("llm", GPU_URI), ("small", CPU_URI)}
    eventually(
        lambda: requested(on_gpu, namespace), until=lambda got: got == both, what="both on the GPU node"
    )
    eventually(
        lambda: requested(on_cpu, namespace),
        until=lambda got: got == {("small", CPU_URI)},
        what="the small model alone on the CPU node",
    )
    priorities = {r.uri: r.priority for r in on_gpu.requests() if r.source.startswith(f"isvc {namespace}/")}
    assert priorities == {GPU_URI: 10, CPU_URI: 15}
    excluded = [e for e in on_cpu.selection().excluded if e.source == f"isvc {namespace}/llm"]
    assert [(e.uri, e.reason) for e in excluded] == [(GPU_URI, "needs nvidia.com/gpu=1, node has 0")]


def test_a_node_labelled_later_starts_fitting(
    apiserver: ApiServer, namespace: str, start_source: Callable[..., IsvcModelSource]
) -> None:
    node = create_node(apiserver, gpus=2)
    apply_isvc(apiserver, namespace, "pinned", gpu_predictor(GPU_URI, nodeSelector={"pool": "llm"}))
    source = start_source(node)
    selection = eventually(
        source.selection,
        until=lambda s: any(e.source == f"isvc {namespace}/pinned" for e in s.excluded),
        what="the pinned isvc excluded",
    )
    assert {e.reason for e in selection.excluded if e.source == f"isvc {namespace}/pinned"} == {
        "node lacks label pool=llm"
    }
    apiserver.kubectl("label", "node", node, "pool=llm")
    eventually(
        lambda: requested(source, namespace),
        until=lambda got: got == {("pinned", GPU_URI)},
        what="the pinned isvc requested",
    )


def test_a_deleted_or_changed_isvc_disappears(
    apiserver: ApiServer, namespace: str, start_source: Callable[..., IsvcModelSource]
) -> None:
    node = create_node(apiserver)
    source = start_source(node)
    apply_isvc(apiserver, namespace, "a", {"model": {"storageUri": CPU_URI}})
    apply_isvc(apiserver, namespace, "b", {"storageUris": [{"uri": GPU_URI}]})
    eventually(
        lambda: requested(source, namespace),
        until=lambda got: got == {("a", CPU_URI), ("b", GPU_URI)},
        what="a and b requested",
    )
    apiserver.kubectl("delete", "inferenceservice", "a", "-n", namespace, "--wait=false")
    apply_isvc(apiserver, namespace, "b", {"storageUris": [{"uri": "gs://bucket/model"}]})
    eventually(lambda: requested(source, namespace), until=lambda got: got == set(), what="nothing requested")
    assert not [r for r in source.records() if r.namespace == namespace]


def test_changes_are_announced_and_a_status_update_is_not(
    apiserver: ApiServer, namespace: str, start_source: Callable[..., IsvcModelSource]
) -> None:
    seen: list[frozenset[str]] = []  # the records' names at each announced change
    holder: list[IsvcModelSource] = []

    def announce() -> None:
        if holder:
            seen.append(frozenset(r.name for r in holder[0].records()))

    holder.append(start_source(create_node(apiserver), namespaces=[namespace], on_change=announce))
    apply_isvc(apiserver, namespace, "a", {"model": {"storageUri": CPU_URI}})
    eventually(lambda: list(seen), until=lambda got: got == [frozenset({"a"})], what="a seen")
    ready = {"type": "Ready", "status": "False"}
    status = json.dumps({"status": {"url": "http://a.example", "conditions": [ready]}})
    apiserver.kubectl(
        "patch", "isvc", "a", "-n", namespace, "--subresource=status", "--type=merge", "-p", status
    )
    apply_isvc(apiserver, namespace, "b", {"model": {"storageUri": GPU_URI}})
    # One watch delivers in order: had the status update been announced, {"a"} would come twice.
    eventually(lambda: list(seen), until=lambda got: got[-1:] == [frozenset({"a", "b"})], what="a and b seen")
    assert seen == [frozenset({"a"}), frozenset({"a", "b"})]


def test_the_watch_carries_on_after_an_api_server_restart(
    apiserver: ApiServer, namespace: str, start_source: Callable[..., IsvcModelSource]
) -> None:
    node = create_node(apiserver)
    source = start_source(node)
    apply_isvc(apiserver, namespace, "before", {"model": {"storageUri": CPU_URI}})
    eventually(
        lambda: requested(source, namespace),
        until=lambda got: got == {("before", CPU_URI)},
        what="before requested",
    )
    apiserver.restart()
    assert requested(source, namespace) == {("before", CPU_URI)}  # kept while reconnecting
    apply_isvc(apiserver, namespace, "after", {"model": {"storageUri": GPU_URI}})
    apiserver.kubectl("label", "node", node, "seen=after-restart")
    eventually(
        lambda: requested(source, namespace),
        until=lambda got: got == {("before", CPU_URI), ("after", GPU_URI)},
        what="before and after requested once the API server is back",
    )
    eventually(
        source.node, until=lambda n: n.labels.get("seen") == "after-restart", what="the relabelled node"
    )


def test_only_configured_namespaces_are_watched(
    apiserver: ApiServer, namespace: str, start_source: Callable[..., IsvcModelSource]
) -> None:
    other = unique("ns")
    apiserver.create_namespace(other)
    node = create_node(apiserver)
    apply_isvc(apiserver, namespace, "mine", {"model": {"storageUri": CPU_URI}})
    apply_isvc(apiserver, other, "theirs", {"model": {"storageUri": GPU_URI}})
    source = start_source(node, namespaces=[namespace])
    eventually(
        lambda: {r.source for r in source.requests()},
        until=lambda got: got == {f"isvc {namespace}/mine"},
        what="only the watched namespace's isvc",
    )


def events(apiserver: ApiServer, namespace: str, involved: str) -> list[dict[str, Any]]:
    items = json.loads(apiserver.kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
    return [e for e in items if e["involvedObject"]["name"] == involved]


def test_events_are_created_and_repeats_aggregated(
    apiserver: ApiServer, api: Any, namespace: str, start_source: Callable[..., IsvcModelSource]
) -> None:
    node = create_node(apiserver)
    apply_isvc(apiserver, namespace, "bad", {"model": {"storageUri": "oci://registry.example.com/UPPER"}})
    recorder = EventRecorder(api, clock=_Clock(), host=node, window_seconds=600)
    source = start_source(node, recorder=recorder)
    warnings = eventually(
        lambda: events(apiserver, namespace, "bad"), until=lambda got: len(got) == 1, what="one warning"
    )
    uid = json.loads(apiserver.kubectl("get", "inferenceservice", "bad", "-n", namespace, "-o", "json"))
    assert warnings[0]["reason"] == "InvalidModelURI"
    assert warnings[0]["type"] == "Warning"
    assert warnings[0]["involvedObject"]["uid"] == uid["metadata"]["uid"]
    assert warnings[0]["involvedObject"]["kind"] == "InferenceService"

    sink = KubeEventSink(recorder=recorder, resolve=source.object_for)
    for _ in range(3):
        sink.emit((f"isvc {namespace}/bad",), warning=False, reason="Prefetched", message="pulled in 1s")
    sink.emit((f"isvc {namespace}/bad",), warning=False, reason="Prefetched", message="pulled in 2s")
    got = {
        e["message"]: e["count"] for e in events(apiserver, namespace, "bad") if e["reason"] == "Prefetched"
    }
    assert got == {"pulled in 1s": 3, "pulled in 2s": 1}

    sink.emit(("models file",), warning=True, reason="PrefetchSkipped", message=f"{namespace}: budget")
    on_node = [e for e in events(apiserver, "default", node) if e["message"] == f"{namespace}: budget"]
    assert [(e["involvedObject"]["kind"], e["type"], e["count"]) for e in on_node] == [("Node", "Warning", 1)]


def test_a_repeat_after_the_window_or_after_deletion_is_a_new_event(
    apiserver: ApiServer, api: Any, namespace: str
) -> None:
    clock = _Clock()
    recorder = EventRecorder(api, clock=clock, window_seconds=60)
    obj = ObjectRef("ConfigMap", "kube-root-ca.crt", namespace)
    recorder.record(obj, reason="Test", message="once")
    recorder.record(obj, reason="Test", message="once")
    clock.offset += 61
    recorder.record(obj, reason="Test", message="once")
    assert sorted(e["count"] for e in events(apiserver, namespace, obj.name)) == [1, 2]
    apiserver.kubectl("delete", "events", "--all", "-n", namespace)
    recorder.record(obj, reason="Test", message="once")
    assert [e["count"] for e in events(apiserver, namespace, obj.name)] == [1]


def test_api_errors_become_kube_errors(apiserver: ApiServer, api: Any, tmp_path: Path) -> None:
    widgets = Collection(
        "widgets",
        client.CustomObjectsApi(api).list_cluster_custom_object,
        (("group", "example.com"), ("version", "v1"), ("plural", "widgets")),
    )
    with pytest.raises(KubeStatusError, match="HTTP 404") as raised:
        list_page(widgets, continue_token=None, limit=1, timeout_seconds=5)
    assert raised.value.status == 404
    config = json.loads(apiserver.kubeconfig.read_text())
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{unused.getsockname()[1]}"
        (tmp_path / "kubeconfig").write_text(json.dumps(config))
        down = api_client(kubeconfig=str(tmp_path / "kubeconfig"))
        with pytest.raises(KubeError, match="listing inferenceservices") as refused:
            list_page(isvc_collection(down), continue_token=None, limit=1, timeout_seconds=2)
    assert not isinstance(refused.value, KubeStatusError)
    down.close()
    with pytest.raises(KubeError, match="not listed yet"):
        IsvcModelSource(api, node_name="never-started").requests()


class _Clock:
    """Real time, moved forward on demand."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


def test_stop_interrupts_a_quiet_watch(api: Any, isvc_crd: str) -> None:
    seen: list[object] = []
    watch = ListWatch(
        isvc_collection(api),
        convert=lambda obj: obj,
        on_reset=seen.append,
        on_event=lambda kind, obj: seen.append(kind),
        settings=WatchSettings(watch_timeout_seconds=300),
    )
    thread = threading.Thread(target=watch.run)
    thread.start()
    assert watch.synced.wait(30)
    eventually(lambda: watch._response is not None, what="the watch open")  # the watch is open and quiet
    watch.stop()
    # The server would end this watch only after 300 s: a thread gone within the wait was stopped.
    thread.join(30)
    assert not thread.is_alive()
