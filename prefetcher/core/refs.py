"""Parsing of model URIs and OCI image references.

Follows the grammar of the distribution project's reference package: a domain is the first path
component when it contains a ``.`` or ``:`` or is ``localhost``; otherwise ``docker.io`` (with
``library/`` for single-component names), which is how containerd names images in CRI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from prefetcher.errors import InvalidReferenceError

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
# Schemes whose payload is an image the node's runtime pulls (KServe: modelcar and image volume).
IMAGE_SCHEMES = ("oci://", "oci+native://")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
)
# ASCII only, as the distribution grammar: Python's \w would also take "tägé".
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
MAX_NAME_LENGTH = 255


@dataclass(frozen=True, order=True)
class ImageRef:
    """A parsed image reference; ``digest`` set means pinned."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def pinned(self) -> bool:
        """True when the reference names a digest."""
        return self.digest is not None

    def canonical(self) -> str:
        """The form containerd reports in ``repo_digests``/``repo_tags``: digest wins over tag."""
        return self._canonical

    @cached_property
    def _canonical(self) -> str:
        # Cached: the planner asks for it many times per model on large nodes.
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or DEFAULT_TAG}"

    def with_digest(self, digest: str) -> ImageRef:
        """This reference pinned to ``digest`` (the tag is dropped: the digest is what is pulled)."""
        if not _DIGEST.fullmatch(digest):
            raise InvalidReferenceError(f"invalid digest {digest!r}")
        return ImageRef(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        return self.canonical()


def strip_scheme(uri: str) -> str:
    """The image reference inside a model URI; a plain reference is returned unchanged."""
    for scheme in IMAGE_SCHEMES:
        if uri.startswith(scheme):
            return uri[len(scheme) :]
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise InvalidReferenceError(
            f"{uri!r}: scheme {scheme}:// is not an image; expected oci:// or a plain image reference"
        )
    return uri


def parse_reference(uri: str) -> ImageRef:
    """Parse ``oci://host/repo[:tag][@digest]`` or a plain image reference."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidReferenceError(f"empty model reference {uri!r}")
    text = strip_scheme(uri.strip())
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise InvalidReferenceError(f"{uri!r}: invalid digest {digest!r}")
    tag = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise InvalidReferenceError(f"{uri!r}: invalid tag {tag!r}")
    registry, repository = _split_domain(text, uri)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    for component in repository.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise InvalidReferenceError(f"{uri!r}: invalid repository component {component!r}")
    if len(repository) > MAX_NAME_LENGTH:
        raise InvalidReferenceError(f"{uri!r}: repository name longer than {MAX_NAME_LENGTH}")
    return ImageRef(registry, repository, tag, digest)


def _split_domain(text: str, uri: str) -> tuple[str, str]:
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _DOMAIN.fullmatch(first):
            raise InvalidReferenceError(f"{uri!r}: invalid registry host {first!r}")
        port = first.rpartition(":")[2] if first.rfind(":") > first.rfind("]") else ""
        if port and not 0 < int(port) <= 65535:
            raise InvalidReferenceError(f"{uri!r}: registry port {port} is not between 1 and 65535")
        if not rest:
            raise InvalidReferenceError(f"{uri!r}: missing repository after {first!r}")
        return first, rest
    if not text:
        raise InvalidReferenceError(f"{uri!r}: missing repository")
    repository = text if sep else f"library/{text}"
    return DEFAULT_REGISTRY, repository
