"""The ``Registry`` port over the OCI distribution v2 HTTP API, asked before a pull.

``resolve`` pins a tag to the digest a CRI ``PullImage`` should use (an index's own digest for a
multi-platform image) and sums config plus layer sizes of this node's platform. Auth answers the
``WWW-Authenticate`` challenge (Basic, or Bearer via the token endpoint) with docker ``config.json``
credentials. Pure helpers are module functions; urllib3 errors become ``RegistryError`` here,
naming registry, repository and cause but never a credential.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from prefetcher.adapters.docker_config import server_host
from prefetcher.core.refs import ImageRef
from prefetcher.errors import ConfigError, RegistryError
from prefetcher.ports import Credentials, ResolvedImage

log = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
# docker.io is a name, not an API endpoint; docker and containerd talk to this host instead.
DOCKER_HUB_HOSTS = {"docker.io": "registry-1.docker.io"}
# Far above any real image (a 10 TB model is 2**43), far below where sums lose meaning.
MAX_BLOB_BYTES = 2**52
_DEFAULT_VARIANTS = {"arm64": "v8", "arm": "v7", "amd64": "v1"}
_PARAM = re.compile(r'([\w.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: scheme (lower case) and its parameters."""

    scheme: str
    params: Mapping[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` value (RFC 7235), or None if empty."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    rest = re.split(r",\s*(?=[\w-]+\s+[\w.-]+\s*=)", rest)[0]  # drop further challenges
    params = {
        m[1].lower(): re.sub(r"\\(.)", r"\1", m[2]) if m[2] is not None else m[3]
        for m in _PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


def _variant_rank(arch: str, variant: str) -> int | None:
    """Numeric rank of ``vN`` variants (defaults filled in), else None."""
    variant = variant or _DEFAULT_VARIANTS.get(arch, "")
    return int(variant[1:]) if re.fullmatch(r"v\d+", variant) else None


def select_platform(manifests: Sequence[Mapping[str, Any]], platform: str) -> Mapping[str, Any]:
    """The index entry for ``platform`` (``os/arch[/variant]``) as containerd picks it: same os and
    arch; a node of variant vN runs vN and lower (arm/v7: v6), highest wins; none = default."""
    os_name, arch, *rest = platform.split("/")
    wanted = rest[0] if rest else ""
    wanted_rank = _variant_rank(arch, wanted)
    best: tuple[int, Mapping[str, Any]] | None = None
    for entry in manifests:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("digest"), str):
            continue  # not a descriptor: a hostile or broken index, never picked
        plat = entry.get("platform") or {}
        if not isinstance(plat, Mapping):
            continue
        if plat.get("os") != os_name or plat.get("architecture") != arch:
            continue
        variant = str(plat.get("variant", ""))
        rank = _variant_rank(arch, variant)
        if rank is None or wanted_rank is None:
            ok, rank = variant == wanted or not variant, 1 if variant == wanted else 0
        else:
            ok = rank <= wanted_rank
        if ok and (best is None or rank > best[0]):
            best = (rank, entry)
    if best is None:
        platforms = [e.get("platform") for e in manifests if isinstance(e, Mapping)]
        offered = sorted({_platform_name(p) for p in platforms if isinstance(p, Mapping)})
        raise LookupError(f"no manifest for {platform}; the index offers {', '.join(offered)}")
    return best[1]


def _platform_name(plat: Mapping[str, Any]) -> str:
    return "/".join(str(plat[key]) for key in ("os", "architecture", "variant") if plat.get(key))


def image_size(manifest: Mapping[str, Any]) -> int:
    """Config plus layer sizes of an image manifest; ``ValueError`` for a size no real image has.

    A registry stores what it is given (distribution accepts a negative size), so every size is
    checked: an integer, non-negative, at most ``MAX_BLOB_BYTES``; and there is at least one layer.
    """
    config, layers = manifest.get("config"), manifest.get("layers")
    if not isinstance(config, Mapping):
        raise ValueError("no config descriptor")
    if not isinstance(layers, list) or not layers:
        raise ValueError("no layers")
    total = _descriptor_size(config, "config")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Mapping):
            raise ValueError(f"layers[{i}] is not a descriptor")
        total += _descriptor_size(layer, f"layers[{i}]")
    if total > MAX_BLOB_BYTES:
        raise ValueError(f"declares {total} bytes in all, more than {MAX_BLOB_BYTES} (4 PiB)")
    return total


def _descriptor_size(descriptor: Mapping[str, Any], where: str) -> int:
    size = descriptor.get("size")
    if type(size) is not int:
        raise ValueError(f"{where}.size must be an integer, got {size!r}")
    if not 0 <= size <= MAX_BLOB_BYTES:
        raise ValueError(f"{where}.size {size} is not a byte count between 0 and {MAX_BLOB_BYTES} (4 PiB)")
    return size


def _error_detail(body: bytes) -> str:
    """``CODE message`` pairs of a distribution error body, or a short excerpt of the body."""
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors)
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace").strip()


class HttpRegistry:
    """Asks registries for manifests over HTTPS (plain HTTP only for ``insecure`` hosts)."""

    def __init__(
        self,
        *,
        platform: str = "linux/amd64",
        credentials: Mapping[str, Credentials] | None = None,
        insecure: Iterable[str] = (),
        ca_file: str | Path | None = None,
        timeout_seconds: float = 30.0,
    ) -> None:
        self._platform = platform
        self._credentials = {server_host(host): c for host, c in (credentials or {}).items()}
        self._insecure = frozenset(insecure)
        self._auth: dict[tuple[str, str, Credentials | None], str] = {}
        context = ssl.create_default_context()
        if ca_file:
            try:
                context.load_verify_locations(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as err:
                raise ConfigError(f"ca_file {str(ca_file)!r}: cannot load: {err}") from err
        self._http = urllib3.PoolManager(
            ssl_context=context,
            timeout=urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds),
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5),
        )

    def close(self) -> None:
        """Close pooled connections."""
        self._http.clear()

    def credentials_for(self, registry: str) -> Credentials | None:
        """Credentials configured for a registry host, if any."""
        return self._credentials.get(server_host(registry))

    def resolve(self, ref: ImageRef, *, credentials: Credentials | None = None) -> ResolvedImage:
        """Pin ``ref`` to a digest and sum config and layer sizes for this node's platform.

        ``credentials`` (a workload's pull secret) replace the configured ones for this call.
        """
        creds = credentials if credentials is not None else self.credentials_for(ref.registry)
        document, media_type, digest = self._manifest(ref, ref.digest or ref.tag or "latest", creds)
        if ref.digest and digest != ref.digest:
            raise RegistryError(f"{self._where(ref)}: manifest {ref.digest} has digest {digest}")
        platform = ""
        if media_type in INDEX_TYPES:
            try:
                listed = document.get("manifests")
                entry = select_platform(listed if isinstance(listed, list) else [], self._platform)
            except LookupError as err:
                raise RegistryError(f"{self._where(ref)}@{digest}: {err}", status=404) from err
            platform = _platform_name(entry.get("platform") or {})
            document, media_type, _ = self._manifest(ref, str(entry["digest"]), creds)
        if media_type in INDEX_TYPES or ("config" not in document and "layers" not in document):
            raise RegistryError(f"{self._where(ref)}: unsupported manifest type {media_type!r}")
        try:
            size = image_size(document)
        except ValueError as err:
            raise RegistryError(f"{self._where(ref)}: manifest {digest}: {err}") from err
        log.debug("resolved %s to %s (%d bytes for %s)", ref, digest, size, self._platform)
        return ResolvedImage(ref.with_digest(digest), size, platform)

    def _where(self, ref: ImageRef) -> str:
        return f"registry {ref.registry} repository {ref.repository}"

    def _manifest(
        self, ref: ImageRef, reference: str, creds: Credentials | None
    ) -> tuple[dict[str, Any], str, str]:
        """Parsed body, media type and digest of a manifest or index."""
        scheme = "http" if ref.registry in self._insecure else "https"
        host = DOCKER_HUB_HOSTS.get(ref.registry, ref.registry)
        url = f"{scheme}://{host}/v2/{ref.repository}/manifests/{reference}"
        answer = self._send(ref, url, {"Accept": ACCEPT}, what=f"manifest {reference}", creds=creds)
        try:
            document = dict(json.loads(answer.data))
        except (ValueError, TypeError) as err:
            raise RegistryError(f"{self._where(ref)}: manifest {reference} is not JSON") from err
        media_type = document.get("mediaType") or answer.headers.get("Content-Type", "")
        digest = answer.headers.get("Docker-Content-Digest") or ""
        if not digest.startswith("sha256:"):
            digest = f"sha256:{hashlib.sha256(answer.data).hexdigest()}"
        return document, str(media_type).split(";")[0].strip(), digest

    def _send(
        self, ref: ImageRef, url: str, headers: Mapping[str, str], *, what: str, creds: Credentials | None
    ) -> urllib3.BaseHTTPResponse:
        """GET with the cached authorization; on 401 answer the challenge once and retry."""
        # Keyed by the credentials too: one namespace's token must never serve another's lookup.
        key = (ref.registry, ref.repository, creds)
        cached = self._auth.get(key, "")
        answer = self._request(ref, "GET", url, {**headers, "Authorization": cached} if cached else headers)
        if answer.status == 401:
            challenge = parse_challenge(answer.headers.get("WWW-Authenticate", ""))
            self._auth[key] = self._authorize(ref, challenge, answer, creds)
            answer = self._request(ref, "GET", url, {**headers, "Authorization": self._auth[key]})
        if answer.status >= 400:
            self._auth.pop(key, None)
            detail = f"HTTP {answer.status} {_error_detail(answer.data)}".strip()
            raise RegistryError(f"{self._where(ref)}: {what}: {detail}", status=answer.status)
        return answer

    def _authorize(
        self,
        ref: ImageRef,
        challenge: Challenge | None,
        answer: urllib3.BaseHTTPResponse,
        creds: Credentials | None,
    ) -> str:
        """The Authorization value that answers ``challenge``; RegistryError(401) if none can."""
        if challenge and challenge.scheme == "bearer" and challenge.params.get("realm"):
            return f"Bearer {self._token(ref, challenge.params, creds)}"
        if challenge and challenge.scheme == "basic" and creds and creds.username:
            pair = f"{creds.username}:{creds.password}".encode()
            return f"Basic {base64.b64encode(pair).decode()}"
        configured = "no usable credentials" if creds else "no credentials configured"
        detail = _error_detail(answer.data)
        raise RegistryError(
            f"{self._where(ref)}: HTTP 401 unauthorized ({configured}) {detail}".strip(), status=401
        )

    def _token(self, ref: ImageRef, params: Mapping[str, str], creds: Credentials | None) -> str:
        """A bearer token from the challenge's realm (docker's token and OAuth2 flows)."""
        scope = params.get("scope") or f"repository:{ref.repository}:pull"
        fields = {k: v for k, v in {"service": params.get("service", ""), "scope": scope}.items() if v}
        realm = params["realm"]
        if creds and creds.identity_token:
            form = {**fields, "grant_type": "refresh_token", "client_id": "modelcar-prefetcher"}
            form["refresh_token"] = creds.identity_token
            answer = self._request(ref, "POST", realm, {}, fields=form, encode_multipart=False)
        else:
            headers = {}
            if creds and creds.username:
                headers = urllib3.make_headers(basic_auth=f"{creds.username}:{creds.password}")
            answer = self._request(ref, "GET", realm, headers, fields=fields)
        if answer.status != 200:
            raise RegistryError(
                f"{self._where(ref)}: token endpoint {realm} answered HTTP {answer.status} "
                f"{_error_detail(answer.data)}".strip(),
                status=answer.status,
            )
        try:
            doc = json.loads(answer.data)
            return str(doc.get("token") or doc["access_token"])
        except (ValueError, KeyError, AttributeError) as err:
            raise RegistryError(f"{self._where(ref)}: token endpoint {realm}: no token") from err

    def _request(
        self, ref: ImageRef, method: str, url: str, headers: Mapping[str, str], **kwargs: Any
    ) -> urllib3.BaseHTTPResponse:
        """One HTTP exchange; transport failures become RegistryError(status=None)."""
        try:
            return self._http.request(method, url, headers=dict(headers), **kwargs)
        except urllib3.exceptions.MaxRetryError as err:
            raise RegistryError(f"{self._where(ref)}: {self._describe(err.reason or err)}") from err
        except urllib3.exceptions.HTTPError as err:
            raise RegistryError(f"{self._where(ref)}: {self._describe(err)}") from err

    @staticmethod
    def _describe(err: Exception) -> str:
        # NewConnectionError subclasses ConnectTimeoutError in urllib3, so test it first.
        if isinstance(err, urllib3.exceptions.NewConnectionError):
            return f"cannot connect: {err}"
        if isinstance(err, urllib3.exceptions.SSLError):
            return f"TLS failure: {err}"
        if isinstance(err, urllib3.exceptions.TimeoutError):
            return f"timed out: {err}"
        return f"request failed: {err}"
