"""Model URI and image reference parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefetcher.core.refs import ImageRef, parse_reference
from prefetcher.errors import InvalidReferenceError

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("uri", "canonical", "pinned"),
    [
        (f"oci://127.0.0.1:5000/models/llama@{D}", f"127.0.0.1:5000/models/llama@{D}", True),
        (f"oci+native://quay.io/org/m:v1@{D}", f"quay.io/org/m@{D}", True),
        ("oci://quay.io/org/m:v1", "quay.io/org/m:v1", False),
        ("busybox", "docker.io/library/busybox:latest", False),
        ("org/model", "docker.io/org/model:latest", False),
        ("localhost/m", "localhost/m:latest", False),
        ("registry.test:5000/a/b/c:1.0-rc_1", "registry.test:5000/a/b/c:1.0-rc_1", False),
        ("[::1]:5000/m:v1", "[::1]:5000/m:v1", False),
    ],
)
def test_parses_and_canonicalises_as_containerd_names_images(uri: str, canonical: str, pinned: bool) -> None:
    ref = parse_reference(uri)
    assert ref.canonical() == canonical
    assert ref.pinned is pinned
    assert parse_reference(ref.canonical()).canonical() == canonical


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "empty"),
        ("oci://", "missing repository"),
        ("s3://bucket/model", "scheme s3:// is not an image"),
        ("oci+fetch://host/m:v1", "scheme oci+fetch://"),
        ("Upper/Case", "invalid repository component 'Upper'"),
        ("oci://h:5000/m@sha256:zz", "invalid digest"),
        ("h.io/m:", "invalid tag"),
        ("h.io/m:bad tag", "invalid tag"),
        ("h.io/", "missing repository"),
        ("h.io/a//b", "invalid repository component ''"),
        ("oci://h.io/m:t\u00e4g\u00e9", "invalid tag"),
        ("oci://h.io/m:\u0661", "invalid tag"),
        ("oci://h.io:65536/m@sha256:" + "0" * 64, "registry port 65536 is not between 1 and 65535"),
        ("oci://h.io:0/m:v1", "registry port 0"),
        ("oci://[::1]:99999/m:v1", "registry port 99999"),
    ],
)
def test_rejects_malformed_references_naming_the_part(uri: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError, match=message.replace("+", r"\+").replace("/", "/")):
        parse_reference(uri)


@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_raises_only_invalid_reference(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReferenceError:
        return
    assert isinstance(ref, ImageRef)
    assert parse_reference(ref.canonical()).canonical() == ref.canonical()


def test_with_digest_pins_and_drops_the_tag() -> None:
    assert parse_reference("h.io/m:v1").with_digest(D).canonical() == f"h.io/m@{D}"
    with pytest.raises(InvalidReferenceError):
        parse_reference("h.io/m:v1").with_digest("md5:00")
