"""The webhook config: KServe's defaults, camelCase keys, errors naming the key and value."""

from __future__ import annotations

import re

import pytest

from prefetcher.config_fields import keys
from prefetcher.errors import ConfigError
from prefetcher.webhook.config import AdmissionTagPolicy, ModelcarMode, WebhookConfig, load_webhook_config


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
    assert (config.modelcar_mode, config.tag_policy) == (ModelcarMode.IMAGE_VOLUME, AdmissionTagPolicy.DENY)
    assert set(keys(WebhookConfig)) == {line.split(":")[0] for line in text.strip().splitlines()}


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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("uidModelCar: 1010", "uidModelCar: unknown key"),
        ("uidModelcar: '1010'", "uidModelcar: expected an integer, got '1010'"),
        ("uidModelcar: -1", "uidModelcar: must be between 0 and 2.14748e+09, got -1"),
        ("cpuModelcar: ten", "cpuModelcar: must be a Kubernetes quantity such as 10m, got 'ten'"),
        ("cpuModelcar: '-10m'", "cpuModelcar: must be a Kubernetes quantity such as 10m, got '-10m'"),
        ("modelPath: /models", "modelPath: the path needs a parent directory other than /"),
        (
            "servingContainers: [ok, Bad_Name]",
            "servingContainers: must be a container name (DNS label), got 'Bad_Name'",
        ),
        (
            "servingEnv: {A: 1}",
            "servingEnv: expected a mapping of variable names to strings (quote numbers: '1')",
        ),
        ("offlineEnv: {'1 A': x}", "offlineEnv: must be an environment variable name, got '1 A'"),
        (
            "modelcarMode: native",
            "modelcarMode: must be one of sidecar, native-sidecar, image-volume, got 'native'",
        ),
        ("tagPolicy: resolve", "tagPolicy: must be one of allow, warn, deny, got 'resolve'"),
        ("requestTimeoutSeconds: 0", "requestTimeoutSeconds: must be between 0.1 and 300, got 0"),
        (
            "initContainerName: modelcar",
            "modelcarContainerName and initContainerName must differ, both are 'modelcar'",
        ),
        ("- a list", "webhook config: expected a mapping, got ['a list']"),
        ("a: [", "webhook config is not valid YAML: line 1, column 5: expected the node content"),
    ],
)
def test_errors_name_the_key_and_the_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_webhook_config(text)


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("cpuModelcar: '1.5'", "cpu_modelcar", "1.5"),
        ("memoryModelcar: 1e3", "memory_modelcar", "1e3"),  # YAML 1.1: a float needs a dot
        ("uidModelcar: 0", "uid_modelcar", 0),
        ("requestTimeoutSeconds: 300", "request_timeout_seconds", 300.0),
        ("offlineEnv: {}", "offline_env", ()),
        ("servingEnv: {B: '2', A: '1'}", "serving_env", (("B", "2"), ("A", "1"))),
        ("modelcarMode: sidecar", "modelcar_mode", ModelcarMode.SIDECAR),
        ("sourceUriAnnotation: example.com/model-uri", "source_uri_annotation", "example.com/model-uri"),
    ],
)
def test_accepted_values(text: str, field: str, value: object) -> None:
    assert getattr(load_webhook_config(text), field) == value
