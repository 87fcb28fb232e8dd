"""InferenceServices as a ``ModelSource``: list and watch them and this node, keep compact records.

Each collection (InferenceServices cluster-wide or per namespace, and this node by name) is kept
by a ``ListWatch`` thread the way client-go's reflector does it: a paged list, then a watch from
the list's resourceVersion with bookmarks; ``410 Gone`` means list again; any other failure
(the API server restarting, a dropped connection) is retried with jittered back-off from the last
resourceVersion seen. Pages are turned into ``IsvcModels`` as they arrive, so neither the raw JSON
nor a kubernetes model object outlives its page. Which models this node should warm is decided by
the pure ``core.isvc.select`` (through ``core.selector``, which fits again only what changed);
the source only holds the latest records and node. ``on_change`` is called whenever what it holds
changes (not for an update the records do not keep, such as a status change), so the agent can
plan again at once instead of at its next resync.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from prefetcher.adapters import kube_api
from prefetcher.adapters.kube_api import Collection, EventRecorder, KubeStatusError, ObjectRef
from prefetcher.core.backoff import BackoffPolicy
from prefetcher.core.isvc import PRIORITY_ANNOTATION, IsvcModels, Selection, extract_models
from prefetcher.core.model import ModelRequest
from prefetcher.core.nodefit import NodeInfo, node_info_from, node_matches_selector
from prefetcher.core.selector import Selector
from prefetcher.errors import KubeError

log = logging.getLogger(__name__)

T = TypeVar("T")
ISVC_SOURCE_PREFIX = "isvc "


@dataclass(frozen=True)
class WatchSettings:
    """Timeouts and pacing of every list and watch."""

    request_timeout_seconds: float = 10.0
    watch_timeout_seconds: int = 300
    page_size: int = 500
    backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(base_seconds=0.5, max_seconds=30.0))


class ListWatch(Generic[T]):
    """Mirrors one collection into callbacks until stopped; ``synced`` is set after the first list."""

    def __init__(
        self,
        collection: Collection,
        *,
        convert: Callable[[Mapping[str, Any]], T],
        on_reset: Callable[[list[T]], None],
        on_event: Callable[[str, T], None],
        settings: WatchSettings,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.collection, self._convert = collection, convert
        self._on_reset, self._on_event = on_reset, on_event
        self._settings, self._draw = settings, draw
        self.synced, self._stop = threading.Event(), threading.Event()
        self._response: Any = None
        self._failures = 0

    def run(self) -> None:
        """List, then watch, until ``stop``; never raises for API errors."""
        version: str | None = None
        while not self._stop.is_set():
            try:
                version = self._list() if version is None else version
                version = self._watch(version)
            except KubeError as error:
                if self._stop.is_set():
                    break
                if isinstance(error, KubeStatusError) and error.status == 410:
                    log.info("%s: resourceVersion expired, listing again", self.collection.what)
                    version = None
                    continue
                self._failures += 1
                delay = self._settings.backoff.delay(self._failures, draw=self._draw())
                log.warning("%s: %s; retrying in %.1fs", self.collection.what, error, delay)
                self._stop.wait(delay)

    def stop(self) -> None:
        """Make ``run`` return soon, interrupting a watch in progress."""
        self._stop.set()
        response = self._response
        if response is not None:
            response.shutdown()  # unblocks a read waiting on the socket (urllib3 >= 2.3)

    def _list(self) -> str:
        items: list[T] = []
        token: str | None = None
        while True:
            page = kube_api.list_page(
                self.collection,
                continue_token=token,
                limit=self._settings.page_size,
                timeout_seconds=self._settings.request_timeout_seconds,
            )
            items.extend(self._convert(item) for item in page.get("items") or () if isinstance(item, Mapping))
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
        self._on_reset(items)
        self.synced.set()
        self._failures = 0
        version = str(metadata.get("resourceVersion", ""))
        log.info("%s: listed %d at resourceVersion %s", self.collection.what, len(items), version)
        return version

    def _watch(self, version: str) -> str:
        self._response = kube_api.open_watch(
            self.collection,
            resource_version=version,
            timeout_seconds=self._settings.watch_timeout_seconds,
            connect_timeout_seconds=self._settings.request_timeout_seconds,
        )
        if self._stop.is_set():  # stop() ran before the response existed
            self._response.shutdown()
        try:
            for event in kube_api.watch_events(self.collection, self._response):
                kind, obj = event.get("type"), event["object"]
                if kind == "ERROR":
                    code = obj.get("code")
                    raise KubeStatusError(
                        f"watching {self.collection.what}: {obj.get('message', obj)}",
                        status=code if isinstance(code, int) else 0,
                    )
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._on_event(str(kind), self._convert(obj))
                self._failures = 0
        finally:
            response, self._response = self._response, None
            response.close()  # a half-read stream must not go back to the pool
            response.release_conn()
        return version


class IsvcModelSource:
    """The ``ModelSource`` of the models InferenceServices name, filtered by fit to this node."""

    def __init__(
        self,
        api: Any,
        *,
        node_name: str,
        namespaces: Sequence[str] = (),
        default_priority: int = 0,
        scale_to_zero_boost: int = 0,
        priority_annotation: str = PRIORITY_ANNOTATION,
        ignore_taints: frozenset[str] = frozenset(),
        node_selector: Mapping[str, Any] | None = None,
        recorder: EventRecorder | None = None,
        settings: WatchSettings | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.node_name = node_name
        self._on_change = on_change
        extract = partial(
            extract_models,
            default_priority=default_priority,
            scale_to_zero_boost=scale_to_zero_boost,
            priority_annotation=priority_annotation,
        )
        self._node_selector, self._recorder = node_selector, recorder
        self._lock = threading.Lock()
        self._records: dict[str, IsvcModels] = {}
        self._node: tuple[NodeInfo, str] | None = None
        self._generation = 0
        self._cached: tuple[int, Selection] | None = None
        self._selector = Selector(ignore_taints=ignore_taints)
        settings = settings or WatchSettings()
        scopes: list[str | None] = [*namespaces] or [None]
        self._watches: list[ListWatch[Any]] = [
            ListWatch(
                kube_api.isvc_collection(api, scope),
                convert=extract,
                on_reset=partial(self._reset, scope),
                on_event=self._update,
                settings=settings,
            )
            for scope in scopes
        ]
        node = kube_api.node_collection(api, node_name)
        self._watches.append(
            ListWatch(
                node, convert=_node, on_reset=self._reset_node, on_event=self._node_event, settings=settings
            )
        )
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start one thread per watched collection."""
        for watch in self._watches:
            thread = threading.Thread(target=watch.run, name=f"watch {watch.collection.what}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_seconds: float = 5.0) -> None:
        """Stop the watches and wait for their threads."""
        for watch in self._watches:
            watch.stop()
        for thread in self._threads:
            thread.join(timeout_seconds)

    def wait_synced(self, timeout_seconds: float) -> bool:
        """Block until every collection was listed once, or ``timeout_seconds`` passed."""
        return all(watch.synced.wait(timeout_seconds) for watch in self._watches)

    def requests(self) -> list[ModelRequest]:
        """The models whose component fits this node; raises ``KubeError`` until listed once."""
        return list(self.selection().requests)

    def selection(self) -> Selection:
        """The models this node should warm, and why every other one is left out."""
        if not all(watch.synced.is_set() for watch in self._watches):
            raise KubeError("InferenceServices and this node are not listed yet")
        with self._lock:
            if self._node is None:
                raise KubeError(f"node {self.node_name} not found")
            if self._cached is not None and self._cached[0] == self._generation:
                return self._cached[1]
            generation, records, node = self._generation, list(self._records.values()), self._node[0]
        if self._node_selector is not None and not node_matches_selector(node, self._node_selector):
            selection = Selection()
        else:
            selection = self._selector.select(records, node)
        with self._lock:
            self._cached = (generation, selection)
        return selection

    def records(self) -> tuple[IsvcModels, ...]:
        """Every InferenceService that names an image model or has a problem."""
        with self._lock:
            return tuple(self._records.values())

    def node(self) -> NodeInfo | None:
        """This node as last seen."""
        with self._lock:
            return self._node[0] if self._node else None

    def record(self, source: str) -> IsvcModels | None:
        """The record of the InferenceService a model ``source`` names, if it is one."""
        if not source.startswith(ISVC_SOURCE_PREFIX):
            return None
        with self._lock:
            return self._records.get(source.removeprefix(ISVC_SOURCE_PREFIX))

    def object_for(self, source: str) -> ObjectRef:
        """The object an Event about ``source`` belongs to: its InferenceService, else this node."""
        record = self.record(source)
        if record is not None:
            return _isvc_ref(record)
        with self._lock:
            node_uid = self._node[1] if self._node else ""
        return ObjectRef("Node", self.node_name, "", node_uid)

    def _reset(self, namespace: str | None, records: list[IsvcModels]) -> None:
        with self._lock:
            previous = self._records
            kept = {k: r for k, r in previous.items() if namespace is not None and r.namespace != namespace}
            self._records = kept | {r.key: r for r in records if r.components or r.problems}
            self._generation += 1
        self._on_change()
        self._report(
            r
            for r in records
            if r.problems and (r.key not in previous or previous[r.key].problems != r.problems)
        )

    def _update(self, kind: str, record: IsvcModels) -> None:
        kept = record if kind != "DELETED" and (record.components or record.problems) else None
        with self._lock:
            previous = self._records.pop(record.key, None)
            if kept is not None:
                self._records[record.key] = kept
            # Status updates and other fields the agent does not keep change nothing here.
            changed = kept != previous
            if changed:
                self._generation += 1
        if changed:
            self._on_change()
        if kind != "DELETED" and (previous is None or previous.problems != record.problems):
            self._report([record])

    def _reset_node(self, nodes: list[tuple[NodeInfo, str]]) -> None:
        self._node_event("ADDED", nodes[0] if nodes else None)

    def _node_event(self, kind: str, node: tuple[NodeInfo, str] | None) -> None:
        current = None if kind == "DELETED" else node
        with self._lock:
            changed, self._node = current != self._node, current
            if changed:
                self._generation += 1
        if changed:
            self._on_change()

    def _report(self, records: Iterable[IsvcModels]) -> None:
        if self._recorder is None:
            return
        for record in records:
            obj = _isvc_ref(record)
            for problem in record.problems:
                try:
                    self._recorder.record(obj, reason=problem.reason, message=problem.message, warning=True)
                except KubeError as error:
                    log.warning("event %s on %s not recorded: %s", problem.reason, record.key, error)


def _node(obj: Mapping[str, Any]) -> tuple[NodeInfo, str]:
    return node_info_from(obj), str((obj.get("metadata") or {}).get("uid", ""))


def _isvc_ref(record: IsvcModels) -> ObjectRef:
    api_version = f"{kube_api.ISVC_GROUP}/{kube_api.ISVC_VERSION}"
    return ObjectRef("InferenceService", record.name, record.namespace, record.uid, api_version)
