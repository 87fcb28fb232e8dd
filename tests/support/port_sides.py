"""Test support: the two sides of each port contract (tests/integration/test_port_contracts.py).

Each side has the same methods: ``publish`` an image under a name, give the port, make it
unreachable, put an image in use or hold a pull under way. The fake sides build ``FakeRuntime``
and ``FakeRegistry``; the real ones ``CriImageRuntime`` on the session containerd (or one of its
own to stop) pulling from the session registry, and ``HttpRegistry`` on that registry (or on a
private one that needs ``GOOD``). Real fixtures are fetched only when a real side is built.
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
from prefetcher.ports import Credentials, ImageRuntime, Registry, ResolvedImage
from prefetcher.testing.fakes import FakeDisk, FakeRegistry, FakeRuntime
from tests.support.containerd import ContainerdFactory, RunningContainerd
from tests.support.oci import PushedImage, push_modelcar
from tests.support.pods import ContainerSpec, CriPods
from tests.support.registry import RunningRegistry, free_port
from tests.support.registry_proxy import gated_proxy

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

    def publish(self, name: str) -> Published:
        """Make an image of its own available under ``name``."""

    def absent(self, name: str) -> str:
        """A reference to an image nobody published."""

    def used(self, image: Published) -> AbstractContextManager[None]:
        """Keep ``image`` (pulled already) in use by a running container for the block."""

    def held(self, name: str) -> AbstractContextManager[str]:
        """A reference whose pull stays under way for the block."""

    def down(self) -> ImageRuntime:
        """A runtime of this kind that cannot be reached."""


class RegistrySide(Protocol):
    """One side of the registry contract."""

    def publish(self, name: str, *, private: bool = False) -> Published:
        """Make an image of its own available under ``name``; ``private``: only to ``GOOD``."""

    def client(self, *, private: bool = False, configured: Credentials | None = None) -> Registry:
        """The port, configured with ``configured`` credentials for the (private) registry."""

    def host(self, *, private: bool = False) -> str:
        """The (private) registry's host."""

    def unreachable(self) -> tuple[Registry, ImageRef]:
        """A port whose registry does not answer, and a reference on it."""


def _fake_image(host: str, name: str) -> Published:
    digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    return Published(f"{host}/contract/{name}@{digest}", f"{host}/contract/{name}:v1", digest, 4096)


def _push(registry: RunningRegistry, name: str, *, model_size_bytes: int = 0) -> PushedImage:
    """A modelcar whose content, hence image id, belongs to this contract case alone."""
    files = {"port-contract.txt": f"{name}\n".encode()}
    return push_modelcar(registry, f"contract/{name}", files=files, model_size_bytes=model_size_bytes)


def _published(pushed: PushedImage) -> Published:
    return Published(pushed.ref, pushed.tag_ref, pushed.digest, pushed.size_bytes)


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
        return _published(_push(self._registry, name))

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
        pushed = _push(self._registry, name, model_size_bytes=2 * MIB)
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
        return _published(_push(self._registry(private), name))

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
