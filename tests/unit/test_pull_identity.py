"""Whose pull secrets a model uses (pure), and reading credentials out of image pull Secrets."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from prefetcher.adapters.docker_config import secret_credentials
from prefetcher.core.isvc import extract_models
from prefetcher.core.pull_identity import PullIdentity, pull_identities
from prefetcher.errors import ConfigError
from prefetcher.ports import Credentials

DIGEST = "sha256:" + "ef" * 32
PRIVATE = f"oci://private.example.com:5000/models/llm@{DIGEST}"
PUBLIC = f"oci://public.example.com/models/small@{DIGEST}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _record(spec: dict[str, Any]) -> Any:
    isvc = {"metadata": {"namespace": "team-a", "name": "llm"}, "spec": spec}
    return extract_models(isvc, default_priority=0, scale_to_zero_boost=0)


def test_the_component_naming_a_model_on_the_registry_gives_the_identity() -> None:
    record = _record(
        {
            "predictor": {"model": {"storageUri": PRIVATE}, "serviceAccountName": "puller"},
            "transformer": {"storageUris": [{"uri": PUBLIC}]},
        }
    )
    assert pull_identities(record, "private.example.com:5000") == (PullIdentity("team-a", "puller"),)
    assert pull_identities(record, "public.example.com") == (PullIdentity("team-a", "default"),)
    assert pull_identities(record, "elsewhere.example.com") == ()


def test_explicit_image_pull_secrets_are_kept_beside_the_account() -> None:
    predictor = {"model": {"storageUri": PRIVATE}, "imagePullSecrets": [{"name": "a"}, {"name": "b"}]}
    record = _record({"predictor": predictor, "explainer": {"model": {"storageUri": PRIVATE}}})
    assert pull_identities(record, "private.example.com:5000") == (
        PullIdentity("team-a", "default", ("a", "b")),
        PullIdentity("team-a", "default"),
    )


def _secret(kind: str, key: str, document: object) -> dict[str, Any]:
    return {"type": kind, "data": {key: _b64(json.dumps(document))}}


def test_dockerconfigjson_and_legacy_dockercfg_secrets() -> None:
    auth = {"auth": _b64("puller:s3cret")}
    modern = _secret("kubernetes.io/dockerconfigjson", ".dockerconfigjson", {"auths": {"reg:5000": auth}})
    legacy = _secret("kubernetes.io/dockercfg", ".dockercfg", {"https://reg:5000/v1/": auth})
    assert secret_credentials(modern) == {"reg:5000": Credentials("puller", "s3cret")}
    assert secret_credentials(legacy) == {"reg:5000": Credentials("puller", "s3cret")}


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ({"type": "Opaque", "data": {}}, "type 'Opaque' is not one of kubernetes.io/dockerconfigjson"),
        ({"type": "kubernetes.io/dockerconfigjson"}, "data has no .dockerconfigjson key"),
        ({"type": "kubernetes.io/dockercfg", "data": {".dockercfg": "%%%"}}, "not base64"),
        ({"type": "kubernetes.io/dockercfg", "data": {".dockercfg": _b64("{nope")}}, "not JSON"),
        (_secret("kubernetes.io/dockercfg", ".dockercfg", ["x"]), "auths is not an object"),
        (
            _secret("kubernetes.io/dockerconfigjson", ".dockerconfigjson", {"auths": {"r": {"auth": "!"}}}),
            "auths.r.auth is not base64",
        ),
    ],
)
def test_malformed_secrets_name_the_problem_not_the_value(secret: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        secret_credentials(secret)
