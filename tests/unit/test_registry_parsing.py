"""Pure parts of the registry adapter: challenges, docker config.json, platform selection."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefetcher.adapters.docker_config import parse_docker_config, read_docker_config, server_host
from prefetcher.adapters.registry import Challenge, image_size, parse_challenge, select_platform
from prefetcher.errors import ConfigError
from prefetcher.ports import Credentials


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/busybox:pull"',
            Challenge(
                "bearer",
                {
                    "realm": "https://auth.docker.io/token",
                    "service": "registry.docker.io",
                    "scope": "repository:library/busybox:pull",
                },
            ),
        ),
        ('Basic realm="test-realm"', Challenge("basic", {"realm": "test-realm"})),
        ("basic realm=plain", Challenge("basic", {"realm": "plain"})),
        (
            'Bearer realm="http://127.0.0.1:1/t", service="a b", error="insufficient_scope"',
            Challenge(
                "bearer",
                {"realm": "http://127.0.0.1:1/t", "service": "a b", "error": "insufficient_scope"},
            ),
        ),
        ('Bearer realm="a\\"b"', Challenge("bearer", {"realm": 'a"b'})),
        # Only the first challenge counts; the second's realm must not override the first's.
        ('Bearer realm="first", Basic realm="second"', Challenge("bearer", {"realm": "first"})),
        ("Basic", Challenge("basic", {})),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_challenge(header: str, expected: Challenge | None) -> None:
    assert parse_challenge(header) == expected


@given(st.text())
def test_parse_challenge_never_raises(header: str) -> None:
    parse_challenge(header)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("server", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("docker.io", "docker.io"),
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("127.0.0.1:5000/v2/", "127.0.0.1:5000"),
        ("Quay.IO", "quay.io"),
    ],
)
def test_server_host(server: str, host: str) -> None:
    assert server_host(server) == host


def test_docker_config_forms() -> None:
    config = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": _b64("hubuser:hub:pass")},
            "registry.example.com": {"username": "u", "password": "p"},
            "http://127.0.0.1:5000": {"identitytoken": "refresh-me"},
            "empty.example.com": {},
        },
        "credsStore": "desktop",
    }
    found = parse_docker_config(json.dumps(config))

    assert found == {
        "docker.io": Credentials("hubuser", "hub:pass"),
        "registry.example.com": Credentials("u", "p"),
        "127.0.0.1:5000": Credentials(identity_token="refresh-me"),
    }


def test_docker_config_without_auths() -> None:
    assert parse_docker_config('{"credHelpers": {"gcr.io": "gcr"}}') == {}
    assert parse_docker_config("{}") == {}


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("not json", "not a JSON object"),
        ("[]", "not a JSON object"),
        ('{"auths": {"r.io": "x"}}', "auths.r.io"),
        ('{"auths": {"r.io": {"auth": "%%%secret%%%"}}}', "auths.r.io.auth"),
    ],
)
def test_docker_config_errors_name_the_key_not_the_secret(text: str, names: str) -> None:
    with pytest.raises(ConfigError, match="docker config") as caught:
        parse_docker_config(text)
    assert names in str(caught.value)
    assert "secret" not in str(caught.value)


def test_read_docker_config_missing_file(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_docker_config(tmp_path / "absent.json")


def test_credentials_repr_hides_password() -> None:
    assert "hunter2" not in repr(Credentials("u", "hunter2"))


def _entry(platform: str, digest: str) -> dict[str, Any]:
    os_name, arch, *variant = platform.split("/")
    plat = {"os": os_name, "architecture": arch}
    if variant:
        plat["variant"] = variant[0]
    return {"digest": digest, "platform": plat}


INDEX = [
    _entry("unknown/unknown", "attestation"),
    _entry("linux/arm/v6", "armv6"),
    _entry("linux/arm/v7", "armv7"),
    _entry("linux/arm64/v8", "arm64"),
    _entry("linux/amd64", "amd64"),
    _entry("linux/amd64/v3", "amd64v3"),
    _entry("windows/amd64", "windows"),
    _entry("linux/ppc64le", "ppc"),
]


@pytest.mark.parametrize(
    ("platform", "digest"),
    [
        ("linux/amd64", "amd64"),
        ("linux/amd64/v3", "amd64v3"),
        ("linux/amd64/v2", "amd64"),
        ("linux/arm64", "arm64"),
        ("linux/arm64/v8", "arm64"),
        ("linux/arm/v7", "armv7"),
        ("linux/arm", "armv7"),
        ("linux/arm/v6", "armv6"),
        ("windows/amd64", "windows"),
        ("linux/ppc64le", "ppc"),
    ],
)
def test_select_platform(platform: str, digest: str) -> None:
    assert select_platform(INDEX, platform)["digest"] == digest


def test_select_platform_without_variant_in_index() -> None:
    index = [_entry("linux/arm64", "plain"), _entry("linux/amd64", "x86")]
    assert select_platform(index, "linux/arm64/v8")["digest"] == "plain"


def test_select_platform_arm_v5_node_cannot_run_v6() -> None:
    with pytest.raises(LookupError, match="no manifest for linux/arm/v5"):
        select_platform(INDEX, "linux/arm/v5")


def test_select_platform_reports_what_is_offered() -> None:
    with pytest.raises(LookupError) as caught:
        select_platform([_entry("linux/arm64/v8", "a"), _entry("linux/amd64", "b")], "linux/s390x")
    assert str(caught.value) == "no manifest for linux/s390x; the index offers linux/amd64, linux/arm64/v8"


def test_select_platform_first_of_equals_wins() -> None:
    index = [_entry("linux/amd64", "first"), _entry("linux/amd64", "second")]
    assert select_platform(index, "linux/amd64")["digest"] == "first"


def _manifest(*sizes: object, config: object = 10) -> dict[str, Any]:
    return {"config": {"size": config}, "layers": [{"size": s} for s in sizes]}


def test_image_size_sums_config_and_layers() -> None:
    assert image_size(_manifest(100, 200)) == 310


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (_manifest(100, -20 * 2**40), r"^layers\[1\]\.size -21990232555520 is not a byte count"),
        (_manifest(100, config=-1), r"^config\.size -1 is not a byte count"),
        (_manifest(2**60), r"^layers\[0\]\.size 1152921504606846976 is not a byte count"),
        (_manifest(2**51, 2**51, 2**51), r"^declares .* bytes in all, more than"),
        (_manifest("100"), r"^layers\[0\]\.size must be an integer, got '100'"),
        (_manifest(True), r"^layers\[0\]\.size must be an integer, got True"),
        (_manifest(1.5), r"^layers\[0\]\.size must be an integer"),
        (_manifest(), r"^no layers$"),
        ({"config": {"size": 1}}, r"^no layers$"),
        ({"layers": [{"size": 1}]}, r"^no config descriptor$"),
        ({"config": {"size": 1}, "layers": ["x"]}, r"^layers\[0\] is not a descriptor$"),
    ],
)
def test_a_lying_manifest_size_is_refused(manifest: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        image_size(manifest)


@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63), min_size=1, max_size=5))
def test_image_size_is_never_negative_whatever_the_manifest_says(sizes: list[int]) -> None:
    try:
        size = image_size(_manifest(*sizes))
    except ValueError:
        size = 0
    assert 0 <= size <= 2**52


def test_read_docker_config_that_is_not_utf8_is_a_config_error(tmp_path: Any) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b'{"auths": {"h": {"auth": "\xff"}}}')
    with pytest.raises(ConfigError, match=r"not valid UTF-8 \(byte offset 26\)"):
        read_docker_config(path)
