"""The port contracts: every case runs against the in-memory fake and the real adapter alike.

``FakeRuntime`` and ``CriImageRuntime`` (on a private containerd pulling from a real registry),
``FakeRegistry`` and ``HttpRegistry`` (on a real registry) must behave the same wherever the agent
relies on it, so that unit tests on the fakes say something about the agent on a node. Each side
is set up by a small harness with the same methods: ``publish`` an image under a name, build the
port, make it unreachable, put an image in use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from prefetcher.adapters.cri import CriImageRuntime
from prefetcher.adapters.registry import HttpRegistry
from prefetcher.core.refs import ImageRef, parse_reference
from prefetcher.errors import PullFailedError, RegistryError, RuntimeUnavailableError
from prefetcher.ports import Credentials, ImageRuntime, Registry, ResolvedImage
from prefetcher.testing.fakes import FakeDisk, FakeRegistry, FakeRuntime
from tests.support.containerd import ContainerdFactory, RunningContainerd
from tests.support.oci import push_modelcar
from tests.support.pods import ContainerSpec, CriPods
from tests.support.registry import RunningRegistry, free_port, start_registry
from tests.support.registry_proxy import gated_proxy

pytestmark = pytest.mark.integration

PULL_TIMEOUT_SECONDS = 120.0
FAKE_HOST = "registry.test:5000"
MIB = 1024**2
GIB = 1024**3
GOOD = Credentials(username="puller", password="s3cret")
WRONG = Credentials(username="puller", password="wrong")


@dataclass(frozen=True)
class Published:
    """An image a registry serves: by digest (``ref``) and by tag (``tag_ref``)."""

    ref: str
    tag_ref: str
    digest: str
    size_bytes: int


class RuntimeSide(Protocol):
    """One side of the runtime contract."""

    runtime: ImageRuntime

    def publish(self, name: str) -> Published: ...

    def absent(self, name: str) -> str: ...

    def used(self, image: Published) -> AbstractContextManager[None]: ...

    def held(self, name: str) -> AbstractContextManager[str]: ...

    def down(self) -> ImageRuntime: ...


class RegistrySide(Protocol):
    """One side of the registry contract."""

    def publish(self, name: str, *, private: bool = False) -> Published: ...

    def client(self, *, private: bool = False, configured: Credentials | None = None) -> Registry: ...

    def host(self, *, private: bool = False) -> str: ...

    def unreachable(self) -> tuple[Registry, ImageRef]: ...


def _fake_image(host: str, name: str) -> Published:
    digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    return Published(f"{host}/contract/{name}@{digest}", f"{host}/contract/{name}:v1", digest, 4096)


class FakeRuntimeSide:
    """``FakeRuntime`` over a fake disk."""

    def __init__(self) -> None:
        self.runtime = FakeRuntime(FakeDisk(total_bytes=GIB))

    def publish(self, name: str) -> Published:
        image = _fake_image(FAKE_HOST, name)
        self.runtime.sizes[image.ref] = image.size_bytes
        self.runtime.tags[image.tag_ref] = image.ref
        return image

    def absent(self, name: str) -> str:
        return f"{FAKE_HOST}/contract/{name}:v1"

    @contextmanager
    def used(self, image: Published) -> Iterator[None]:
        status = self.runtime.image_status(image.ref)
        assert status is not None
        names = {status.id, image.ref}
        self.runtime.in_use |= names
        yield
        self.runtime.in_use -= names

    @contextmanager
    def held(self, name: str) -> Iterator[str]:
        image = self.publish(name)
        self.runtime.held.add(image.ref)
        yield image.ref

    def down(self) -> ImageRuntime:
        return FakeRuntime(FakeDisk(total_bytes=GIB), down=True)


class CriRuntimeSide:
    """``CriImageRuntime`` on the session containerd, pulling from the session registry."""

    def __init__(self, request: pytest.FixtureRequest, stack: ExitStack, tmp_path: Path) -> None:
        self._request = request
        self._registry: RunningRegistry = request.getfixturevalue("registry")
        self._containerd: RunningContainerd = request.getfixturevalue("containerd")
        self._tmp_path = tmp_path
        self._stack = stack
        self.runtime = stack.enter_context(CriImageRuntime(self._containerd.endpoint))

    def publish(self, name: str) -> Published:
        files = {"name.txt": f"{name}\n".encode()}  # content, hence image id, of this test alone
        pushed = push_modelcar(self._registry, f"contract/{name}", files=files)
        return Published(pushed.ref, pushed.tag_ref, pushed.digest, pushed.size_bytes)

    def absent(self, name: str) -> str:
        return f"{self._registry.host}/contract/{name}:v1"

    @contextmanager
    def used(self, image: Published) -> Iterator[None]:
        with (
            CriPods(self._containerd.endpoint, log_root=self._tmp_path / "logs") as pods,
            pods.sandbox("contract") as sandbox,
        ):
            container = sandbox.start(ContainerSpec("server", image.ref, command=["sleep", "infinity"]))
            sandbox.wait_running(container)
            yield

    @contextmanager
    def held(self, name: str) -> Iterator[str]:
        files = {"name.txt": f"{name}\n".encode()}
        pushed = push_modelcar(self._registry, f"contract/{name}", files=files, model_size_bytes=2 * MIB)
        with gated_proxy(self._registry, pushed.layer_digests[-1], hold_after=MIB) as proxy:
            self._containerd.trust_registry(proxy.host)
            yield f"{proxy.host}/{pushed.repository}@{pushed.digest}"

    def down(self) -> ImageRuntime:
        factory: ContainerdFactory = self._request.getfixturevalue("containerd_factory")
        daemon = factory()
        runtime = self._stack.enter_context(CriImageRuntime(daemon.endpoint, timeout_seconds=5))
        daemon.stop()
        return runtime


class FakeRegistrySide:
    """``FakeRegistry``: one table; a private image is ``protected`` by ``GOOD``."""

    def __init__(self) -> None:
        self._table: dict[str, ResolvedImage] = {}
        self._protected: dict[str, Credentials] = {}

    def publish(self, name: str, *, private: bool = False) -> Published:
        image = _fake_image(self.host(private=private), name)
        pinned = ResolvedImage(parse_reference(image.ref), image.size_bytes)
        for ref in (image.ref, image.tag_ref):
            key = parse_reference(ref).canonical()
            self._table[key] = pinned
            if private:
                self._protected[key] = GOOD
        return image

    def client(self, *, private: bool = False, configured: Credentials | None = None) -> Registry:
        credentials = {self.host(private=private): configured} if configured else {}
        return FakeRegistry(table=self._table, protected=self._protected, credentials=credentials)

    def host(self, *, private: bool = False) -> str:
        return "private.test:5000" if private else FAKE_HOST

    def unreachable(self) -> tuple[Registry, ImageRef]:
        return FakeRegistry(down=True), parse_reference(f"{FAKE_HOST}/contract/any:v1")


class HttpRegistrySide:
    """``HttpRegistry`` on the session registry; a private one (htpasswd ``GOOD``) when asked."""

    def __init__(self, request: pytest.FixtureRequest, stack: ExitStack) -> None:
        self._request = request
        self._stack = stack
        self._public: RunningRegistry = request.getfixturevalue("registry")

    def _registry(self, private: bool) -> RunningRegistry:
        if not private:
            return self._public
        running: RunningRegistry = self._request.getfixturevalue("private_registry")
        return running

    def publish(self, name: str, *, private: bool = False) -> Published:
        files = {"name.txt": f"{name}\n".encode()}
        pushed = push_modelcar(self._registry(private), f"contract/{name}", files=files)
        return Published(pushed.ref, pushed.tag_ref, pushed.digest, pushed.size_bytes)

    def client(self, *, private: bool = False, configured: Credentials | None = None) -> Registry:
        host = self.host(private=private)
        credentials = {host: configured} if configured else {}
        adapter = HttpRegistry(insecure=[host], credentials=credentials, timeout_seconds=10)
        self._stack.callback(adapter.close)
        return adapter

    def host(self, *, private: bool = False) -> str:
        return self._registry(private).host

    def unreachable(self) -> tuple[Registry, ImageRef]:
        host = f"127.0.0.1:{free_port()}"  # nothing listens there
        adapter = HttpRegistry(insecure=[host], timeout_seconds=5)
        self._stack.callback(adapter.close)
        return adapter, parse_reference(f"{host}/contract/any:v1")


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry that answers only ``GOOD``'s requests (htpasswd)."""
    with start_registry(
        tmp_path_factory.mktemp("private"), htpasswd=(GOOD.username, GOOD.password)
    ) as running:
        yield running


@pytest.fixture(params=["fake", "cri"])
def side(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RuntimeSide]:
    """The runtime contract's two sides."""
    with ExitStack() as stack:
        yield FakeRuntimeSide() if request.param == "fake" else CriRuntimeSide(request, stack, tmp_path)


@pytest.fixture(params=["fake", "http"])
def registry_side(request: pytest.FixtureRequest) -> Iterator[RegistrySide]:
    """The registry contract's two sides."""
    with ExitStack() as stack:
        yield FakeRegistrySide() if request.param == "fake" else HttpRegistrySide(request, stack)


def _pull(runtime: ImageRuntime, ref: str) -> str:
    return runtime.start_pull(ref, credentials=None, timeout_seconds=PULL_TIMEOUT_SECONDS).result(
        PULL_TIMEOUT_SECONDS
    )


def test_a_pull_by_digest_is_listed_and_known_by_reference_and_id(side: RuntimeSide) -> None:
    image = side.publish("by-digest")

    image_id = _pull(side.runtime, image.ref)

    listed = {cached.id: cached for cached in side.runtime.list_images()}
    assert listed[image_id].repo_digests == (image.ref,)
    assert listed[image_id].repo_tags == ()
    assert listed[image_id].size_bytes > 0
    assert side.runtime.image_status(image.ref) == listed[image_id]
    assert side.runtime.image_status(image_id) == listed[image_id]


def test_a_pull_by_tag_records_the_tag_and_the_digest(side: RuntimeSide) -> None:
    image = side.publish("by-tag")

    image_id = _pull(side.runtime, image.tag_ref)

    status = side.runtime.image_status(image.tag_ref)
    assert status is not None
    assert (status.id, status.repo_tags, status.repo_digests) == (image_id, (image.tag_ref,), (image.ref,))
    assert _pull(side.runtime, image.ref) == image_id  # the same image under its digest
    assert side.runtime.image_status(image.ref) == status


def test_an_image_never_pulled_has_no_status(side: RuntimeSide) -> None:
    assert side.runtime.image_status(side.absent("never-pushed")) is None


def test_remove_forgets_every_name_and_removing_again_is_no_error(side: RuntimeSide) -> None:
    image = side.publish("removed")
    image_id = _pull(side.runtime, image.tag_ref)

    side.runtime.remove_image(image_id)

    assert side.runtime.image_status(image.ref) is None
    assert side.runtime.image_status(image.tag_ref) is None
    assert image_id not in {cached.id for cached in side.runtime.list_images()}
    side.runtime.remove_image(image_id)


def test_a_pull_of_a_missing_image_fails_not_found(side: RuntimeSide) -> None:
    handle = side.runtime.start_pull(
        side.absent("never-pushed"), credentials=None, timeout_seconds=PULL_TIMEOUT_SECONDS
    )

    with pytest.raises(PullFailedError) as caught:
        handle.result(PULL_TIMEOUT_SECONDS)
    assert caught.value.reason == "not_found"
    assert handle.done()


def test_an_image_is_in_use_while_a_container_runs_it(side: RuntimeSide) -> None:
    image = side.publish("in-use")
    image_id = _pull(side.runtime, image.ref)
    assert image_id not in side.runtime.images_in_use()

    with side.used(image):
        assert {image_id, image.ref} <= side.runtime.images_in_use()

    assert image_id not in side.runtime.images_in_use()


def test_a_pull_under_way_is_not_done_and_cancelling_it_fails_it_cancelled(side: RuntimeSide) -> None:
    with side.held("held") as ref:
        handle = side.runtime.start_pull(ref, credentials=None, timeout_seconds=PULL_TIMEOUT_SECONDS)
        assert not handle.done()
        with pytest.raises(TimeoutError):
            handle.result(0)

        handle.cancel()

        with pytest.raises(PullFailedError) as caught:
            handle.result(PULL_TIMEOUT_SECONDS)
        assert caught.value.reason == "cancelled"
        assert handle.done()
        assert side.runtime.image_status(ref) is None


def test_every_call_to_a_runtime_that_is_down_is_unavailable(side: RuntimeSide) -> None:
    runtime = side.down()

    with pytest.raises(RuntimeUnavailableError):
        runtime.list_images()
    with pytest.raises(RuntimeUnavailableError):
        runtime.image_status("registry.test/any:v1")
    with pytest.raises(RuntimeUnavailableError):
        runtime.start_pull("registry.test/any:v1", credentials=None, timeout_seconds=5)
    with pytest.raises(RuntimeUnavailableError):
        runtime.remove_image("sha256:" + "0" * 64)
    with pytest.raises(RuntimeUnavailableError):
        runtime.images_in_use()


def _resolve(registry: Registry, ref: str, credentials: Credentials | None = None) -> ResolvedImage:
    return registry.resolve(parse_reference(f"oci://{ref}"), credentials=credentials)


def test_a_tag_resolves_to_its_digest_and_size(registry_side: RegistrySide) -> None:
    image = registry_side.publish("resolved")
    client = registry_side.client()

    by_tag, by_digest = _resolve(client, image.tag_ref), _resolve(client, image.ref)

    assert by_tag == by_digest
    assert by_tag.ref.canonical() == image.ref
    assert by_tag.ref.digest == image.digest
    assert by_tag.size_bytes == image.size_bytes


def test_a_missing_image_is_404(registry_side: RegistrySide) -> None:
    image = registry_side.publish("present")
    client = registry_side.client()

    with pytest.raises(RegistryError) as caught:
        _resolve(client, image.tag_ref.replace("/present:", "/absent:"))
    assert caught.value.status == 404


def test_an_unreachable_registry_fails_without_a_status(registry_side: RegistrySide) -> None:
    client, ref = registry_side.unreachable()

    with pytest.raises(RegistryError) as caught:
        client.resolve(ref)
    assert caught.value.status is None


def test_a_private_image_needs_its_credentials(registry_side: RegistrySide) -> None:
    image = registry_side.publish("private", private=True)
    client = registry_side.client(private=True)

    for credentials in (None, WRONG):
        with pytest.raises(RegistryError) as caught:
            _resolve(client, image.tag_ref, credentials)
        assert caught.value.status == 401
    assert _resolve(client, image.tag_ref, GOOD).ref.digest == image.digest


def test_configured_credentials_serve_calls_that_pass_none(registry_side: RegistrySide) -> None:
    image = registry_side.publish("configured", private=True)
    client = registry_side.client(private=True, configured=GOOD)

    assert client.credentials_for(registry_side.host(private=True)) == GOOD
    assert client.credentials_for("elsewhere.test") is None
    assert _resolve(client, image.tag_ref).ref.digest == image.digest
    with pytest.raises(RegistryError) as caught:
        _resolve(client, image.tag_ref, WRONG)  # a workload's own credentials replace them
    assert caught.value.status == 401
