"""HttpRegistry against a real docker-registry: tags, digests, indexes, sizes, errors, TLS."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from prefetcher.adapters.registry import DOCKER_LIST, HttpRegistry
from prefetcher.core.refs import parse_reference
from prefetcher.errors import ConfigError, RegistryError
from tests.support.oci import (
    PushedImage,
    PushedIndex,
    push_index,
    push_manifest,
    push_modelcar,
)
from tests.support.registry import (
    RegistryClient,
    RunningRegistry,
    free_port,
    loopback_server,
    make_tls_files,
    start_registry,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def client(registry: RunningRegistry) -> Iterator[HttpRegistry]:
    """A client that reaches the session registry over plain HTTP."""
    adapter = HttpRegistry(insecure=[registry.host], timeout_seconds=10)
    yield adapter
    adapter.close()


@pytest.fixture(scope="module")
def model(registry: RunningRegistry) -> PushedImage:
    files = {"config.json": b'{"arch": "tiny"}'}
    return push_modelcar(registry, "client/model", files=files, model_size_bytes=65536, seed=11)


@pytest.fixture(scope="module")
def index(registry: RunningRegistry) -> PushedIndex:
    amd64 = push_modelcar(registry, "client/multi", tag="amd64", model_size_bytes=1000, seed=21)
    arm64 = push_modelcar(
        registry, "client/multi", tag="arm64", model_size_bytes=3000, seed=22, platform="linux/arm64/v8"
    )
    return push_index(registry, "client/multi", {"linux/amd64": amd64, "linux/arm64/v8": arm64}, tag="v1")


def test_resolve_tag_pins_digest_and_sums_sizes(client: HttpRegistry, model: PushedImage) -> None:
    resolved = client.resolve(parse_reference(f"oci://{model.tag_ref}"))

    assert resolved.ref == parse_reference(model.ref)
    assert resolved.ref.tag is None
    assert resolved.size_bytes == model.size_bytes
    assert resolved.platform == ""


def test_resolve_digest(client: HttpRegistry, model: PushedImage) -> None:
    resolved = client.resolve(parse_reference(model.uri))

    assert str(resolved.ref) == model.ref
    assert resolved.size_bytes == model.size_bytes


def test_resolve_latest_when_no_tag(client: HttpRegistry, registry: RunningRegistry) -> None:
    latest = push_modelcar(registry, "client/latest", tag="latest", files={"f": b"x"})

    resolved = client.resolve(parse_reference(f"{registry.host}/client/latest"))

    assert resolved.ref.digest == latest.digest


def test_index_pins_index_digest_and_sizes_this_platform(client: HttpRegistry, index: PushedIndex) -> None:
    resolved = client.resolve(parse_reference(index.tag_ref))

    assert resolved.ref.digest == index.digest
    assert resolved.size_bytes == index.images["linux/amd64"].size_bytes
    assert resolved.platform == "linux/amd64"


def test_index_arm64_node(registry: RunningRegistry, index: PushedIndex) -> None:
    arm = HttpRegistry(platform="linux/arm64", insecure=[registry.host], timeout_seconds=10)
    try:
        resolved = arm.resolve(parse_reference(index.ref))
    finally:
        arm.close()

    assert resolved.ref.digest == index.digest
    assert resolved.size_bytes == index.images["linux/arm64/v8"].size_bytes
    assert resolved.platform == "linux/arm64/v8"


def test_index_without_this_platform(registry: RunningRegistry, index: PushedIndex) -> None:
    s390x = HttpRegistry(platform="linux/s390x", insecure=[registry.host], timeout_seconds=10)
    try:
        with pytest.raises(RegistryError, match="no manifest for linux/s390x") as caught:
            s390x.resolve(parse_reference(index.ref))
    finally:
        s390x.close()
    assert caught.value.status == 404
    assert "client/multi" in str(caught.value)


def test_docker_manifest_list(client: HttpRegistry, registry: RunningRegistry, index: PushedIndex) -> None:
    amd64 = index.images["linux/amd64"]
    entry = {"mediaType": amd64.media_type, "digest": amd64.digest, "size": amd64.manifest_size}
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [{**entry, "platform": {"architecture": "amd64", "os": "linux"}}],
        }
    ).encode()
    digest = push_manifest(RegistryClient(registry), "client/multi", "dockerlist", body, DOCKER_LIST)

    resolved = client.resolve(parse_reference(f"{registry.host}/client/multi:dockerlist"))

    assert resolved.ref.digest == digest
    assert resolved.size_bytes == amd64.size_bytes


@pytest.mark.parametrize(
    ("reference", "repository", "code"),
    [
        ("client/model:no-such-tag", "client/model", "MANIFEST_UNKNOWN"),
        ("client/no-such-repo:v1", "client/no-such-repo", "MANIFEST_UNKNOWN"),
        ("client/model@sha256:" + "0" * 64, "client/model", "MANIFEST_UNKNOWN"),
    ],
)
def test_missing_is_404(
    client: HttpRegistry, model: PushedImage, reference: str, repository: str, code: str
) -> None:
    host = model.ref.split("/", 1)[0]
    with pytest.raises(RegistryError) as caught:
        client.resolve(parse_reference(f"{host}/{reference}"))

    assert caught.value.status == 404
    assert caught.value.reason == "not_found"
    assert f"registry {host} repository {repository}:" in str(caught.value)
    assert code in str(caught.value)


def test_connection_refused(model: PushedImage) -> None:
    host = f"127.0.0.1:{free_port()}"
    adapter = HttpRegistry(insecure=[host], timeout_seconds=5)
    try:
        with pytest.raises(RegistryError, match="cannot connect") as caught:
            adapter.resolve(parse_reference(f"{host}/client/model:v1"))
    finally:
        adapter.close()
    assert caught.value.status is None
    assert caught.value.reason == "unreachable"
    assert host in str(caught.value)


def test_timeout_when_registry_never_answers() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        adapter = HttpRegistry(insecure=[host], timeout_seconds=0.5)
        try:
            with pytest.raises(RegistryError, match="timed out") as caught:
                adapter.resolve(parse_reference(f"{host}/any/model:v1"))
        finally:
            adapter.close()
    assert caught.value.status is None


def test_https_by_default(registry: RunningRegistry, model: PushedImage) -> None:
    """A host not listed as insecure is spoken to over TLS, which a plain-HTTP registry fails."""
    adapter = HttpRegistry(timeout_seconds=5)
    try:
        with pytest.raises(RegistryError, match="TLS failure") as caught:
            adapter.resolve(parse_reference(model.tag_ref))
    finally:
        adapter.close()
    assert caught.value.status is None


class _FailingProxy(BaseHTTPRequestHandler):
    """Forwards to the real registry, except manifests of ``broken/*`` answer 500."""

    upstream = ""

    def do_GET(self) -> None:
        if self.path.startswith("/v2/broken/") and "/manifests/" in self.path:
            body = json.dumps({"errors": [{"code": "UNKNOWN", "message": "injected failure"}]}).encode()
            self._answer(500, {"Content-Type": "application/json"}, body)
            return
        conn = http.client.HTTPConnection(self.upstream, timeout=10)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            conn.request("GET", self.path, headers=headers)
            answer = conn.getresponse()
            self._answer(answer.status, dict(answer.getheaders()), answer.read())
        finally:
            conn.close()

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_server_error_is_500(registry: RunningRegistry) -> None:
    push_modelcar(registry, "broken/model", files={"f": b"1"})
    handler = type("Proxy", (_FailingProxy,), {"upstream": registry.host})
    with loopback_server(handler) as url:
        host = url.removeprefix("http://")
        adapter = HttpRegistry(insecure=[host], timeout_seconds=10)
        try:
            good = adapter.resolve(parse_reference(f"{host}/client/model:v1"))
            with pytest.raises(RegistryError) as caught:
                adapter.resolve(parse_reference(f"{host}/broken/model:v1"))
        finally:
            adapter.close()
    assert good.size_bytes > 0
    assert caught.value.status == 500
    assert caught.value.reason == "server_error"
    assert "broken/model" in str(caught.value) and "injected failure" in str(caught.value)


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    workdir = tmp_path_factory.mktemp("tls-registry")
    tls = make_tls_files(workdir / "tls")
    with start_registry(workdir, tls=(tls.cert_file, tls.key_file), ca_file=tls.ca_file) as running:
        yield running


def test_https_with_custom_ca(tls_registry: RunningRegistry) -> None:
    assert tls_registry.ca_file is not None
    image = push_modelcar(tls_registry, "tls/model", files={"f": b"tls"})
    adapter = HttpRegistry(ca_file=tls_registry.ca_file, timeout_seconds=10)
    try:
        resolved = adapter.resolve(parse_reference(image.tag_ref))
    finally:
        adapter.close()

    assert resolved.ref.digest == image.digest
    assert resolved.size_bytes == image.size_bytes


def test_https_without_the_ca_fails(tls_registry: RunningRegistry) -> None:
    image = push_modelcar(tls_registry, "tls/model", files={"f": b"tls"})
    adapter = HttpRegistry(timeout_seconds=10)
    try:
        with pytest.raises(RegistryError, match=r"TLS failure.*CERTIFICATE_VERIFY_FAILED") as caught:
            adapter.resolve(parse_reference(image.tag_ref))
    finally:
        adapter.close()
    assert caught.value.status is None
    assert tls_registry.host in str(caught.value)


def test_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="ca_file"):
        HttpRegistry(ca_file=bad)
    with pytest.raises(ConfigError, match="ca_file"):
        HttpRegistry(ca_file=tmp_path / "absent.pem")
