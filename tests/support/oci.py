"""Test support: build modelcar OCI images in Python and push them to a test registry.

No Docker and no network: layer 1 is a busybox base (``/bin/busybox`` from the host's
busybox-static plus applet symlinks), layer 2 holds the model files under ``models/``. Layers are
uncompressed tars (``application/vnd.oci.image.layer.v1.tar``) so a 1 GiB model builds at disk
speed; large model data is seeded random bytes streamed in chunks, never held in memory. Built
layers are cached on disk by their inputs, so pushing the same model again costs a HEAD request.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import io
import json
import os
import platform as host
import random
import shutil
import tarfile
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.support.registry import RegistryClient, Response, RunningRegistry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
BUSYBOX = Path("/usr/bin/busybox")
BUSYBOX_APT_PACKAGE = "busybox-static"
APPLETS = ("sh", "ln", "sleep", "ls", "cat", "test", "true", "readlink", "stat", "echo", "du")
MODEL_FILE = "model.bin"
_CHUNK = 1 << 20
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def host_platform() -> str:
    """This machine's platform in OCI form, e.g. ``linux/amd64``."""
    machine = host.machine()
    return f"linux/{_ARCH.get(machine, machine)}"


@dataclass(frozen=True)
class Blob:
    """A content-addressed file ready to push."""

    path: Path
    digest: str
    size: int
    media_type: str

    def descriptor(self) -> dict[str, object]:
        """The OCI descriptor of this blob."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class PushedImage:
    """An image manifest pushed to a registry; ``size_bytes`` is config plus layers as stored."""

    repository: str
    tag: str
    digest: str
    size_bytes: int
    ref: str
    tag_ref: str
    platform: str = ""
    config_digest: str = ""
    layer_digests: tuple[str, ...] = ()
    manifest_size: int = 0
    media_type: str = OCI_MANIFEST

    @property
    def uri(self) -> str:
        """The KServe ``storageUri`` of this image, pinned by digest."""
        return f"oci://{self.ref}"


@dataclass(frozen=True)
class PushedIndex:
    """An image index pushed to a registry; ``images`` maps platform to its image."""

    repository: str
    tag: str
    digest: str
    ref: str
    tag_ref: str
    images: Mapping[str, PushedImage] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        """The KServe ``storageUri`` of this index, pinned by digest."""
        return f"oci://{self.ref}"


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target: BinaryIO) -> None:
        self._target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._target.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


class _RandomStream(io.RawIOBase):
    """``size`` seeded random bytes, generated in fixed chunks so reads of any size agree."""

    def __init__(self, size: int, seed: int) -> None:
        self._left = size
        self._rng = random.Random(seed)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        while len(self._buffer) < n:
            self._buffer += self._rng.randbytes(_CHUNK)
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        self._left -= n
        return out


@functools.cache
def default_cache_dir() -> Path:
    """A per-process directory for built layers, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="oci-layer-cache-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def _tar_entry(name: str, kind: bytes, *, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def _build_tar(cache_dir: Path, key: str, fill: functools.partial[None]) -> Blob:
    """Build (or reuse) the layer tar named by ``key``; ``fill`` adds the entries."""
    path, meta = cache_dir / f"{key}.tar", cache_dir / f"{key}.json"
    if meta.exists():
        known = json.loads(meta.read_text())
        return Blob(path, known["digest"], known["size"], OCI_LAYER_TAR)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        writer = _HashingWriter(out)
        tar = tarfile.TarFile(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_CHUNK)
        with tar:
            fill(tar)
    os.replace(tmp, path)
    blob = Blob(path, f"sha256:{writer.sha256.hexdigest()}", writer.size, OCI_LAYER_TAR)
    meta.write_text(json.dumps({"digest": blob.digest, "size": blob.size}))
    return blob


def _fill_busybox(tar: tarfile.TarFile) -> None:
    for directory in ("bin", "dev", "etc", "mnt", "proc", "sys", "usr", "usr/bin"):
        tar.addfile(_tar_entry(f"{directory}/", tarfile.DIRTYPE, mode=0o755))
    tar.addfile(_tar_entry("tmp/", tarfile.DIRTYPE, mode=0o1777))
    with BUSYBOX.open("rb") as binary:
        size = BUSYBOX.stat().st_size
        tar.addfile(_tar_entry("bin/busybox", tarfile.REGTYPE, mode=0o755, size=size), binary)
    for applet in APPLETS:
        tar.addfile(_tar_entry(f"bin/{applet}", tarfile.SYMTYPE, mode=0o777, link="busybox"))


def busybox_layer(cache_dir: Path | None = None) -> Blob:
    """The base layer: ``/bin/busybox`` and symlinks for the applets a modelcar needs."""
    if not BUSYBOX.exists():
        pytest.fail(f"{BUSYBOX} not found: install the Debian package {BUSYBOX_APT_PACKAGE!r}")
    stat = BUSYBOX.stat()
    key = f"busybox-{stat.st_size}-{int(stat.st_mtime)}"
    return _build_tar(cache_dir or default_cache_dir(), key, functools.partial(_fill_busybox))


def _fill_models(tar: tarfile.TarFile, files: Mapping[str, bytes], size: int, seed: int) -> None:
    directories = {"models"}
    for name in files:
        parts = f"models/{name}".split("/")[:-1]
        directories.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    for directory in sorted(directories):
        tar.addfile(_tar_entry(f"{directory}/", tarfile.DIRTYPE, mode=0o755))
    for name, data in sorted(files.items()):
        entry = _tar_entry(f"models/{name}", tarfile.REGTYPE, mode=0o644, size=len(data))
        tar.addfile(entry, io.BytesIO(data))
    if size:
        entry = _tar_entry(f"models/{MODEL_FILE}", tarfile.REGTYPE, mode=0o644, size=size)
        tar.addfile(entry, _RandomStream(size, seed))


def model_layer(
    files: Mapping[str, bytes], model_size_bytes: int, seed: int, cache_dir: Path | None = None
) -> Blob:
    """The model layer: ``files`` under ``models/`` plus ``models/model.bin`` of random bytes."""
    listing = hashlib.sha256()
    for name, data in sorted(files.items()):
        listing.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\0".encode())
    key = f"model-{seed}-{model_size_bytes}-{listing.hexdigest()[:16]}"
    fill = functools.partial(_fill_models, files=files, size=model_size_bytes, seed=seed)
    return _build_tar(cache_dir or default_cache_dir(), key, fill)


def _expect(answer: Response, status: int, what: str) -> None:
    if answer.status != status:
        raise RuntimeError(f"{what}: registry answered {answer.status}: {answer.body[:300]!r}")


# (registry url, blob digest) -> a repository that holds it, for cross-repository mounts.
_BLOB_LOCATIONS: dict[tuple[str, str], str] = {}


def push_blob(client: RegistryClient, repository: str, blob: Blob | bytes) -> str:
    """Upload a blob unless the repository has it (mounting it from another when known)."""
    scope = f"repository:{repository}:pull,push"
    if isinstance(blob, bytes):
        digest, size = f"sha256:{hashlib.sha256(blob).hexdigest()}", len(blob)
    else:
        digest, size = blob.digest, blob.size
    if client.request("HEAD", f"/v2/{repository}/blobs/{digest}", scope=scope).status == 200:
        return digest
    start = _start_upload(client, repository, digest)
    if start.status == 201:  # mounted from another repository
        return digest
    _expect(start, 202, f"start upload to {repository}")
    location = urllib.parse.urlsplit(start.headers["location"])
    query = f"{location.query}&" if location.query else ""
    target = f"{location.path}?{query}digest={urllib.parse.quote(digest)}"
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    if isinstance(blob, bytes):
        answer = client.request("PUT", target, scope=scope, body=blob, headers=headers)
    else:
        with blob.path.open("rb") as body:
            answer = client.request("PUT", target, scope=scope, body=body, headers=headers)
    _expect(answer, 201, f"upload {digest} to {repository}")
    _BLOB_LOCATIONS[(client.registry.url, digest)] = repository
    return digest


def _start_upload(client: RegistryClient, repository: str, digest: str) -> Response:
    """POST an upload, asking to mount ``digest`` when another repository is known to hold it.

    A registry that cannot mount answers 202 with a fresh upload session instead.
    """
    source = _BLOB_LOCATIONS.get((client.registry.url, digest))
    path = f"/v2/{repository}/blobs/uploads/"
    scope = f"repository:{repository}:pull,push"
    if source and source != repository:
        path += "?" + urllib.parse.urlencode({"mount": digest, "from": source})
        scope += f" repository:{source}:pull"
    return client.request("POST", path, scope=scope)


def push_manifest(
    client: RegistryClient, repository: str, reference: str, body: bytes, media_type: str
) -> str:
    """PUT a manifest or index under a tag or digest; its digest as the registry reports it."""
    scope = f"repository:{repository}:pull,push"
    headers = {"Content-Type": media_type}
    answer = client.request(
        "PUT", f"/v2/{repository}/manifests/{reference}", scope=scope, body=body, headers=headers
    )
    _expect(answer, 201, f"push manifest {repository}:{reference}")
    digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
    if answer.headers.get("docker-content-digest") != digest:
        raise RuntimeError(f"registry reports digest {answer.headers} for {digest}")
    return digest


def _platform_fields(platform: str) -> dict[str, str]:
    os_name, arch, *variant = platform.split("/")
    fields = {"architecture": arch, "os": os_name}
    if variant:
        fields["variant"] = variant[0]
    return fields


def push_image(
    registry: RunningRegistry,
    repository: str,
    *,
    layers: tuple[Blob, ...],
    tag: str,
    platform: str,
    cmd: tuple[str, ...],
) -> PushedImage:
    """Push ``layers`` with a config for ``platform`` running ``cmd``, tagged ``tag``."""
    client = RegistryClient(registry)
    config = {
        "created": "1970-01-01T00:00:00Z",
        **_platform_fields(platform),
        "config": {"Env": ["PATH=/bin:/usr/bin"], "Cmd": list(cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
    }
    config_body = json.dumps(config, sort_keys=True).encode()
    config_digest = push_blob(client, repository, config_body)
    for layer in layers:
        push_blob(client, repository, layer)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_body)},
        "layers": [layer.descriptor() for layer in layers],
    }
    body = json.dumps(manifest, sort_keys=True).encode()
    digest = push_manifest(client, repository, tag, body, OCI_MANIFEST)
    return PushedImage(
        repository=repository,
        tag=tag,
        digest=digest,
        size_bytes=len(config_body) + sum(layer.size for layer in layers),
        ref=f"{registry.host}/{repository}@{digest}",
        tag_ref=f"{registry.host}/{repository}:{tag}",
        platform=platform,
        config_digest=config_digest,
        layer_digests=tuple(layer.digest for layer in layers),
        manifest_size=len(body),
    )


def push_modelcar(
    registry: RunningRegistry,
    repository: str,
    *,
    tag: str = "v1",
    files: Mapping[str, bytes] | None = None,
    model_size_bytes: int = 0,
    seed: int = 0,
    platform: str | None = None,
    cache_dir: Path | None = None,
) -> PushedImage:
    """Push a modelcar: busybox base plus ``files`` and ``model_size_bytes`` random bytes."""
    layers = (
        busybox_layer(cache_dir),
        model_layer(files or {}, model_size_bytes, seed, cache_dir),
    )
    return push_image(
        registry,
        repository,
        layers=layers,
        tag=tag,
        platform=platform or host_platform(),
        cmd=("/bin/sh",),
    )


def push_sandbox_image(
    registry: RunningRegistry, *, repository: str = "pause", tag: str = "3.9"
) -> PushedImage:
    """A busybox image running ``sleep infinity``, usable as containerd's sandbox image."""
    return push_image(
        registry,
        repository,
        layers=(busybox_layer(),),
        tag=tag,
        platform=host_platform(),
        cmd=("/bin/sleep", "infinity"),
    )


def _copy_into(client: RegistryClient, image: PushedImage, repository: str) -> None:
    """Make ``image`` (pushed elsewhere) present in ``repository`` by cross-repository mounts."""
    scope = f"repository:{repository}:pull,push repository:{image.repository}:pull"
    for digest in (image.config_digest, *image.layer_digests):
        query = urllib.parse.urlencode({"mount": digest, "from": image.repository})
        answer = client.request("POST", f"/v2/{repository}/blobs/uploads/?{query}", scope=scope)
        _expect(answer, 201, f"mount {digest} from {image.repository}")
    body, media_type, _ = get_manifest(client.registry, image.repository, image.digest)
    push_manifest(client, repository, image.digest, body, media_type)


def push_index(
    registry: RunningRegistry,
    repository: str,
    platforms: Mapping[str, PushedImage],
    *,
    tag: str = "index",
) -> PushedIndex:
    """Push an OCI image index listing each image under its platform (``os/arch[/variant]``)."""
    client = RegistryClient(registry)
    entries = []
    for platform, image in platforms.items():
        if image.repository != repository:
            _copy_into(client, image, repository)
        entry = {"mediaType": image.media_type, "digest": image.digest, "size": image.manifest_size}
        entries.append({**entry, "platform": _platform_fields(platform)})
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    body = json.dumps(index, sort_keys=True).encode()
    digest = push_manifest(client, repository, tag, body, OCI_INDEX)
    return PushedIndex(
        repository=repository,
        tag=tag,
        digest=digest,
        ref=f"{registry.host}/{repository}@{digest}",
        tag_ref=f"{registry.host}/{repository}:{tag}",
        images=dict(platforms),
    )


MANIFEST_TYPES = (
    OCI_MANIFEST,
    OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


def get_manifest(registry: RunningRegistry, repository: str, reference: str) -> tuple[bytes, str, str]:
    """GET a manifest or index by tag or digest: ``(body, media type, digest header)``."""
    client = RegistryClient(registry)
    answer = client.request(
        "GET",
        f"/v2/{repository}/manifests/{reference}",
        scope=f"repository:{repository}:pull",
        headers={"Accept": ", ".join(MANIFEST_TYPES)},
    )
    _expect(answer, 200, f"get manifest {repository}:{reference}")
    return answer.body, answer.headers["content-type"], answer.headers["docker-content-digest"]


def delete_manifest(registry: RunningRegistry, repository: str, digest: str) -> None:
    """DELETE a manifest by digest (the test registry has deletes enabled)."""
    client = RegistryClient(registry)
    answer = client.request(
        "DELETE", f"/v2/{repository}/manifests/{digest}", scope=f"repository:{repository}:*"
    )
    _expect(answer, 202, f"delete {repository}@{digest}")
