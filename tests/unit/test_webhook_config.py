"""The webhook config: KServe's defaults, camelCase keys, errors naming the key and value."""

from __future__ import annotations

import ast
import inspect
import itertools
from dataclasses import fields

import pytest

from prefetcher.errors import ConfigError
from prefetcher.webhook import config as config_module
from prefetcher.webhook.config import KEYS, WebhookConfig, load_webhook_config


def test_empty_document_gives_kserve_defaults() -> None:
    config = load_webhook_config("")
    assert config == WebhookConfig()
    assert (config.uid_modelcar, config.cpu_modelcar, config.memory_modelcar) == (1010, "10m", "15Mi")
    assert config.source_uri_annotation == "internal.serving.kserve.io/storage-initializer-sourceuri"
    assert (config.modelcar_container_name, config.init_container_name) == ("modelcar", "modelcar-init")
    assert (config.volume_name, config.model_path, config.mount_dir) == (
        "kserve-provision-location",
        "/mnt/models",
        "/mnt",
    )
    assert config.serving_env == (("MODEL_INIT_MODE", "async"),)


def test_every_key_is_read() -> None:
    text = """
sourceUriAnnotation: example.com/model
servingContainers: [server]
additionalContainers: []
modelcarContainerName: car
initContainerName: car-init
volumeName: models
modelPath: /opt/models/main
uidModelcar: null
cpuModelcar: 20m
memoryModelcar: 32Mi
servingEnv: {MODEL_INIT_MODE: sync}
offlineEnv: {}
modelcarMode: image-volume
tagPolicy: deny
restrictedSecurityContext: false
maxRequestBytes: 1048576
requestTimeoutSeconds: 2.5
"""
    config = load_webhook_config(text)
    assert config.serving_containers == ("server",) and config.additional_containers == ()
    assert config.uid_modelcar is None and config.offline_env == ()
    assert config.mount_dir == "/opt/models" and config.request_timeout_seconds == 2.5
    assert config.serving_env == (("MODEL_INIT_MODE", "sync"),)
    assert set(KEYS) == {line.split(":")[0] for line in text.strip().splitlines()}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("uidModelCar: 1010", "uidModelCar"),
        ("uidModelcar: '1010'", "uidModelcar"),
        ("uidModelcar: -1", "uidModelcar"),
        ("uidModelcar: true", "uidModelcar"),
        ("cpuModelcar: ten", "cpuModelcar"),
        ("memoryModelcar: 15 Mi", "memoryModelcar"),
        ("modelPath: models", "modelPath"),
        ("modelPath: /models", "modelPath"),
        ("modelPath: /mnt/models/", "modelPath"),
        ("modelPath: /mnt/$(HOME)", "modelPath"),
        ("servingContainers: kserve-container", "servingContainers"),
        ("servingContainers: [Kserve_Container]", "servingContainers"),
        ("servingEnv: {A: 1}", "servingEnv"),
        ("offlineEnv: [HF_HUB_OFFLINE]", "offlineEnv"),
        ("modelcarMode: native", "modelcarMode"),
        ("tagPolicy: warning", "tagPolicy"),
        ("restrictedSecurityContext: yes please", "restrictedSecurityContext"),
        ("maxRequestBytes: 10", "maxRequestBytes"),
        ("requestTimeoutSeconds: 0", "requestTimeoutSeconds"),
        ("sourceUriAnnotation: 'has space'", "sourceUriAnnotation"),
        ("volumeName: Bad_Name", "volumeName"),
        ("initContainerName: modelcar", "initContainerName"),
    ],
)
def test_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_webhook_config(text)


@pytest.mark.parametrize("text", ["- a list", "just text", "a: [unclosed"])
def test_documents_that_are_not_mappings_are_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        load_webhook_config(text)


def test_every_field_has_a_one_line_docstring() -> None:
    tree = ast.parse(inspect.getsource(config_module.WebhookConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    documented = {
        node.target.id
        for node, after in itertools.pairwise(body)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
        and "\n" not in after.value.value
    }
    assert documented == {field.name for field in fields(WebhookConfig)}
