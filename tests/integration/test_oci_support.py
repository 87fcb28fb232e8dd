"""The test support itself: images built in Python land in a real registry as pushed."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.support.oci import (
    OCI_INDEX,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    get_manifest,
    host_platform,
    model_layer,
    push_index,
    push_modelcar,
    push_sandbox_image,
)
from tests.support.registry import RegistryClient, RunningRegistry

pytestmark = pytest.mark.integration


def test_modelcar_manifest_reads_back(registry: RunningRegistry) -> None:
    image = push_modelcar(registry, "support/tiny", files={"config.json": b"{}"}, model_size_bytes=4096)

    body, media_type, digest = get_manifest(registry, "support/tiny", "v1")
    manifest = json.loads(body)

    assert media_type == OCI_MANIFEST
    assert digest == image.digest == f"sha256:{hashlib.sha256(body).hexdigest()}"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [OCI_LAYER_TAR] * 2
    stored = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    assert stored == image.size_bytes
    assert image.ref == f"{registry.host}/support/tiny@{image.digest}"
    assert image.tag_ref == f"{registry.host}/support/tiny:v1"
    assert image.uri == f"oci://{image.ref}"


def test_model_layer_holds_files_and_random_data(registry: RunningRegistry) -> None:
    image = push_modelcar(
        registry, "support/files", files={"a/b.txt": b"hello"}, model_size_bytes=1000, seed=7
    )
    client = RegistryClient(registry)
    answer = client.request(
        "GET", f"/v2/support/files/blobs/{image.layer_digests[1]}", scope="repository:support/files:pull"
    )

    with tarfile.open(fileobj=io.BytesIO(answer.body)) as tar:
        names = tar.getnames()
        data = tar.extractfile("models/model.bin").read()  # type: ignore[union-attr]
        text = tar.extractfile("models/a/b.txt").read()  # type: ignore[union-attr]

    assert names[:3] == ["models", "models/a", "models/a/b.txt"]
    assert text == b"hello" and len(data) == 1000


def test_image_config_has_path_and_platform(registry: RunningRegistry) -> None:
    image = push_modelcar(registry, "support/config")
    client = RegistryClient(registry)
    answer = client.request(
        "GET", f"/v2/support/config/blobs/{image.config_digest}", scope="repository:support/config:pull"
    )
    config = json.loads(answer.body)

    assert config["config"]["Env"] == ["PATH=/bin:/usr/bin"]
    assert f"{config['os']}/{config['architecture']}" == host_platform()
    assert config["rootfs"]["diff_ids"] == list(image.layer_digests)


def test_layers_are_deterministic_and_cached(tmp_path: Path) -> None:
    first = model_layer({}, 3 * 1024 * 1024 + 5, seed=1, cache_dir=tmp_path)
    again = model_layer({}, 3 * 1024 * 1024 + 5, seed=1, cache_dir=tmp_path)
    other = model_layer({}, 3 * 1024 * 1024 + 5, seed=2, cache_dir=tmp_path)

    assert first == again
    assert first.digest == f"sha256:{hashlib.sha256(first.path.read_bytes()).hexdigest()}"
    assert other.digest != first.digest


def test_index_lists_platforms(registry: RunningRegistry) -> None:
    amd64 = push_modelcar(registry, "support/multi-amd64", seed=1, files={"x": b"1"})
    arm64 = push_modelcar(
        registry, "support/multi", tag="arm", seed=2, files={"x": b"2"}, platform="linux/arm64/v8"
    )

    index = push_index(registry, "support/multi", {"linux/amd64": amd64, "linux/arm64/v8": arm64})
    body, media_type, digest = get_manifest(registry, "support/multi", "index")
    manifests = json.loads(body)["manifests"]

    assert media_type == OCI_INDEX and digest == index.digest
    assert [m["digest"] for m in manifests] == [amd64.digest, arm64.digest]
    assert manifests[1]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    # The amd64 image was copied into the index's repository.
    assert get_manifest(registry, "support/multi", amd64.digest)[2] == amd64.digest


def test_sandbox_image_runs_sleep(registry: RunningRegistry) -> None:
    image = push_sandbox_image(registry)
    client = RegistryClient(registry)
    answer = client.request("GET", f"/v2/pause/blobs/{image.config_digest}", scope="repository:pause:pull")

    assert json.loads(answer.body)["config"]["Cmd"] == ["/bin/sleep", "infinity"]
    assert image.tag_ref == f"{registry.host}/pause:3.9"
