"""The port contracts: every case runs against the in-memory fake and the real adapter alike.

``FakeRuntime`` and ``CriImageRuntime`` (on a private containerd pulling from a real registry),
``FakeRegistry`` and ``HttpRegistry`` (on a real registry) must behave the same wherever the agent
relies on it, so that unit tests on the fakes say something about the agent on a node. The sides
are built by the harnesses of ``tests.support.port_sides``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from prefetcher.core.refs import parse_reference
from prefetcher.errors import PullFailedError, RegistryError, RuntimeUnavailableError
from prefetcher.ports import Credentials, ImageRuntime, Registry, ResolvedImage
from tests.support.port_sides import (
    GOOD,
    WRONG,
    CriRuntimeSide,
    FakeRegistrySide,
    FakeRuntimeSide,
    HttpRegistrySide,
    RegistrySide,
    RuntimeSide,
)
from tests.support.registry import RunningRegistry, start_registry

pytestmark = pytest.mark.integration

PULL_TIMEOUT_SECONDS = 120.0


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
