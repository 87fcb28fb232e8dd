"""The narrow seam over the Kubernetes client: building a client, raw list/watch calls, Events.

Responses are read as raw JSON (``_preload_content=False``) so no kubernetes model object is ever
built or kept. Every call carries a timeout, and every client, urllib3 or decoding error leaves
this module as ``KubeError`` (``KubeStatusError`` when the server answered with a status) raised
from its cause. ``EventRecorder`` writes core/v1 Events and folds repeats within a window into
the existing Event's ``count``, as client-go's event correlator does.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config

from prefetcher.errors import KubeError
from prefetcher.ports import Clock

log = logging.getLogger(__name__)

ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
NODE_EVENT_NAMESPACE = "default"  # cluster-scoped objects' Events live here (core/v1 validation)
MAX_MESSAGE_CHARS = 1024


class KubeStatusError(KubeError):
    """The API server answered with an error status (``410`` means: list again)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def api_client(*, kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A client from a kubeconfig file, else from the pod's service account; no global state."""
    configuration = client.Configuration()
    # Untyped on purpose: client releases differ in signatures (v37 moved to pydantic models),
    # and this module only passes plain dicts and reads raw JSON.
    from_file: Any = config.load_kube_config
    in_cluster: Any = config.load_incluster_config
    with kube_errors("loading the Kubernetes client configuration"):
        if kubeconfig:
            from_file(config_file=kubeconfig, context=context, client_configuration=configuration)
        else:
            in_cluster(client_configuration=configuration)
    return client.ApiClient(configuration)


@contextmanager
def kube_errors(what: str) -> Iterator[None]:
    """Translate client, transport and decoding errors raised inside into ``KubeError``."""
    try:
        yield
    except client.ApiException as error:
        if not error.status:  # the client's own wrapping of a TLS or request error
            raise KubeError(f"{what}: {error.reason}") from error
        raise KubeStatusError(f"{what}: HTTP {error.status} {error.reason}", status=error.status) from error
    except config.ConfigException as error:
        raise KubeError(f"{what}: {error}") from error
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
        raise KubeError(f"{what}: {type(error).__name__}: {error}") from error


def micro_time(seconds: float) -> str:
    """``seconds`` (Unix time) as a MicroTime (a Lease's ``renewTime``) the API server accepts.

    The client turns the text into a ``datetime`` for its ``V1Lease`` model and sends its
    ``isoformat()``, which has no fraction at a whole second: the server's MicroTime layout needs
    one and answers 400. A microsecond later always has one.
    """
    when = datetime.fromtimestamp(seconds, UTC)
    return (when.replace(microsecond=1) if when.microsecond == 0 else when).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Collection:
    """Something to list and watch: a generated client ``list_*`` method and its fixed arguments."""

    what: str
    call: Callable[..., Any]
    arguments: tuple[tuple[str, Any], ...] = ()


def isvc_collection(api: Any, namespace: str | None = None) -> Collection:
    """InferenceServices of one namespace, or of all namespaces when ``namespace`` is None."""
    objects = client.CustomObjectsApi(api)
    if namespace is None:
        return Collection(
            "inferenceservices",
            objects.list_cluster_custom_object,
            (("group", ISVC_GROUP), ("version", ISVC_VERSION), ("plural", ISVC_PLURAL)),
        )
    return Collection(
        f"inferenceservices in {namespace}",
        objects.list_namespaced_custom_object,
        (("group", ISVC_GROUP), ("version", ISVC_VERSION), ("namespace", namespace), ("plural", ISVC_PLURAL)),
    )


def node_collection(api: Any, name: str) -> Collection:
    """The one Node called ``name``."""
    return Collection(
        f"node {name}", client.CoreV1Api(api).list_node, (("field_selector", f"metadata.name={name}"),)
    )


def list_page(
    collection: Collection, *, continue_token: str | None, limit: int, timeout_seconds: float
) -> Mapping[str, Any]:
    """One page of a list, as decoded JSON."""
    extra = {"_continue": continue_token} if continue_token else {}
    with kube_errors(f"listing {collection.what}"):
        response = collection.call(
            **dict(collection.arguments),
            limit=limit,
            _preload_content=False,
            _request_timeout=(timeout_seconds, timeout_seconds),
            **extra,
        )
        try:
            document = json.loads(response.data)
        finally:
            response.release_conn()
    if not isinstance(document, Mapping):
        raise KubeError(f"listing {collection.what}: response is not an object")
    return document


def list_items(
    collection: Collection, *, timeout_seconds: float, limit: int = 500
) -> list[Mapping[str, Any]]:
    """Every item of a list, page after page."""
    items: list[Mapping[str, Any]] = []
    token: str | None = None
    while True:
        page = list_page(collection, continue_token=token, limit=limit, timeout_seconds=timeout_seconds)
        items.extend(item for item in page.get("items") or () if isinstance(item, Mapping))
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return items


def open_watch(
    collection: Collection, *, resource_version: str, timeout_seconds: int, connect_timeout_seconds: float
) -> Any:
    """Start a watch from ``resource_version``; the server ends it after ``timeout_seconds``."""
    with kube_errors(f"watching {collection.what}"):
        return collection.call(
            **dict(collection.arguments),
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            _preload_content=False,
            # a silent connection is dead once the server's own timeout has long passed
            _request_timeout=(connect_timeout_seconds, timeout_seconds + 30),
        )


def watch_events(collection: Collection, response: Any) -> Iterator[Mapping[str, Any]]:
    """The decoded events of a watch response, one per JSON line, until the server ends it."""
    pending = bytearray()
    with kube_errors(f"watching {collection.what}"):
        for chunk in response.stream(amt=None, decode_content=True):
            pending.extend(chunk)
            while (end := pending.find(b"\n")) >= 0:
                line, pending[: end + 1] = bytes(pending[:end]), b""
                if line.strip():
                    yield _event(json.loads(line))


def _event(document: object) -> Mapping[str, Any]:
    if not isinstance(document, Mapping) or not isinstance(document.get("object"), Mapping):
        raise ValueError("watch event without an object")
    return document


def discard(response: Any) -> None:
    """Read the rest of a raw (``_preload_content=False``) response, then give its connection back.

    Released unread, a body poisons its pooled connection: while the response lives, the next
    request on it fails after being sent (``ResponseNotReady``); once it is freed, the bytes still
    on the socket are what the next request reads as its answer.
    """
    response.drain_conn()
    response.release_conn()


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The object an Event is about."""

    kind: str
    name: str
    namespace: str = ""
    uid: str = ""
    api_version: str = "v1"

    def event_namespace(self) -> str:
        """Where this object's Events live: its own namespace, or ``default`` if cluster-scoped."""
        return self.namespace or NODE_EVENT_NAMESPACE


@dataclass(slots=True)
class _Seen:
    namespace: str
    name: str
    count: int
    last_monotonic: float


class EventRecorder:
    """Creates core/v1 Events; a repeat within ``window_seconds`` bumps the existing Event's count."""

    def __init__(
        self,
        api: Any,
        *,
        clock: Clock,
        component: str = "modelcar-prefetcher",
        host: str = "",
        window_seconds: float = 600.0,
        timeout_seconds: float = 10.0,
        max_tracked: int = 4096,
    ) -> None:
        self._events: Any = client.CoreV1Api(api)
        self._clock, self._component, self._host = clock, component, host
        self._window, self._timeout, self._max_tracked = window_seconds, timeout_seconds, max_tracked
        self._seen: OrderedDict[tuple[ObjectRef, str, str, str], _Seen] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, obj: ObjectRef, *, reason: str, message: str, warning: bool = False) -> None:
        """Create an Event about ``obj``, or count a repeat; raises ``KubeError``."""
        kind, message = ("Warning" if warning else "Normal"), message[:MAX_MESSAGE_CHARS]
        key = (obj, reason, message, kind)
        with self._lock:
            now = self._clock.monotonic()
            seen = self._seen.get(key)
            if seen is not None and now - seen.last_monotonic < self._window and self._bump(seen):
                seen.last_monotonic = now
                self._seen.move_to_end(key)
                return
            name = self._create(obj, reason=reason, message=message, kind=kind)
            self._seen[key] = _Seen(obj.event_namespace(), name, 1, now)
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_tracked:
                self._seen.popitem(last=False)

    def _bump(self, seen: _Seen) -> bool:
        patch = {"count": seen.count + 1, "lastTimestamp": self._timestamp()}
        try:
            with kube_errors(f"updating event {seen.namespace}/{seen.name}"):
                response = self._events.patch_namespaced_event(
                    seen.name,
                    seen.namespace,
                    patch,
                    _preload_content=False,
                    _request_timeout=(self._timeout, self._timeout),
                )
                discard(response)
        except KubeStatusError as error:
            if error.status == 404:  # expired (the API server's event TTL) or deleted: start anew
                return False
            raise
        seen.count += 1
        return True

    def _create(self, obj: ObjectRef, *, reason: str, message: str, kind: str) -> str:
        now, namespace = self._timestamp(), obj.event_namespace()
        name = f"{obj.name}.{int(self._clock.now() * 1e9):x}"  # as client-go names Events
        involved = {"apiVersion": obj.api_version, "kind": obj.kind, "name": obj.name}
        involved |= {"namespace": obj.namespace} if obj.namespace else {}
        involved |= {"uid": obj.uid} if obj.uid else {}
        body = {
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": kind,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": self._component, "host": self._host},
            "reportingComponent": self._component,
            "reportingInstance": self._host,
        }
        with kube_errors(f"creating event {reason} on {obj.kind} {obj.namespace}/{obj.name}"):
            response = self._events.create_namespaced_event(
                namespace, body, _preload_content=False, _request_timeout=(self._timeout, self._timeout)
            )
            discard(response)
        return name

    def _timestamp(self) -> str:
        return datetime.fromtimestamp(self._clock.now(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeEventSink:
    """The agent's ``EventSink`` as Events on the objects ``resolve`` names for each source."""

    def __init__(self, *, recorder: EventRecorder, resolve: Callable[[str], ObjectRef]) -> None:
        self._recorder, self._resolve = recorder, resolve

    def emit(self, sources: tuple[str, ...], *, warning: bool, reason: str, message: str) -> None:
        """Record the event once per object named by ``sources``; failures are logged, not raised."""
        for target in dict.fromkeys(self._resolve(source) for source in sources or ("",)):
            try:
                self._recorder.record(target, reason=reason, message=message, warning=warning)
            except KubeError as error:
                log.warning("event %s on %s %s not recorded: %s", reason, target.kind, target.name, error)


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def agent_namespace() -> str:
    """Where the agent's Leases live: ``$POD_NAMESPACE``, else its ServiceAccount's, else ``default``."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:  # not in a pod: a kubeconfig's user, as in development
        return "default"
