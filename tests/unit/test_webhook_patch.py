"""The pure JSONPatch builder: KServe-compatible wiring, the improvements, idempotence, bad input."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefetcher.webhook.config import WebhookConfig
from prefetcher.webhook.containers import INIT_SCRIPT, LINK_ENV, MODELCAR_SCRIPT
from prefetcher.webhook.initializer import REPLACED_ANNOTATION
from prefetcher.webhook.patch import (
    CONTAINER_ANNOTATION,
    MODEL_URI_ANNOTATION,
    MOUNT_PATH_ANNOTATION,
    Mutation,
    build_patch,
)
from tests.support.jsonpatch import apply_patch

KSERVE = "internal.serving.kserve.io/storage-initializer-sourceuri"
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"quay.io/acme/llama@{DIGEST}"
PINNED = f"oci://{IMAGE}"
DEFAULT = WebhookConfig()
SIDECAR = dataclasses.replace(DEFAULT, modelcar_mode="sidecar")
IMAGE_VOLUME = dataclasses.replace(DEFAULT, modelcar_mode="image-volume")
ALL_MODES = [DEFAULT, SIDECAR, IMAGE_VOLUME]


def make_pod(*names: str, annotations: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    containers = [{"name": name, "image": f"runtime/{name}:1"} for name in names]
    return {
        "metadata": {"annotations": {KSERVE: PINNED} if annotations is None else annotations},
        "spec": {"containers": containers, **spec},
    }


def wire(pod: dict[str, Any], config: WebhookConfig = DEFAULT) -> tuple[Mutation, dict[str, Any]]:
    mutation = build_patch(pod=pod, config=config)
    assert mutation.denial is None, mutation.denial
    return mutation, apply_patch(pod, list(mutation.patch))


def denial(pod: dict[str, Any], config: WebhookConfig = DEFAULT) -> str:
    mutation = build_patch(pod=pod, config=config)
    assert mutation.denial is not None and not mutation.patch
    return mutation.denial


def named(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(item for item in items if item["name"] == name)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {entry["name"]: entry.get("value") for entry in container.get("env", [])}


# -- KServe-compatible wiring -------------------------------------------------------------------


def test_kserve_pod_is_wired_like_kserve_in_classic_sidecar_mode() -> None:
    _, pod = wire(make_pod("kserve-container"), SIDECAR)
    spec = pod["spec"]
    assert spec["shareProcessNamespace"] is True
    assert spec["volumes"] == [{"name": "kserve-provision-location", "emptyDir": {}}]
    server, modelcar = spec["containers"]
    assert modelcar["name"] == "modelcar" and modelcar["image"] == IMAGE
    assert modelcar["volumeMounts"] == [{"name": "kserve-provision-location", "mountPath": "/mnt"}]
    assert "restartPolicy" not in modelcar
    (init,) = spec["initContainers"]
    assert init["name"] == "modelcar-init" and init["image"] == IMAGE
    assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"
    for injected in (init, modelcar):
        amounts = {"cpu": "10m", "memory": "15Mi"}
        assert injected["resources"] == {"requests": amounts, "limits": amounts}
        assert injected["securityContext"]["runAsUser"] == 1010
    assert server["volumeMounts"] == [{"name": "kserve-provision-location", "mountPath": "/mnt"}]
    assert env_of(server)["MODEL_INIT_MODE"] == "async"
    assert server["securityContext"] == {"runAsUser": 1010}


def test_native_sidecar_is_an_init_container_gated_by_a_startup_probe() -> None:
    _, pod = wire(make_pod("kserve-container"))
    assert [c["name"] for c in pod["spec"]["containers"]] == ["kserve-container"]
    init, modelcar = pod["spec"]["initContainers"]
    assert init["name"] == "modelcar-init" and "restartPolicy" not in init
    assert modelcar["name"] == "modelcar" and modelcar["restartPolicy"] == "Always"
    probe = modelcar["startupProbe"]
    assert probe["exec"]["command"][-1] == f'test -d "${LINK_ENV}/"'
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 30
    assert env_of(modelcar) == {LINK_ENV: "/mnt/models"}


def test_commands_are_the_stable_constants() -> None:
    _, pod = wire(make_pod("kserve-container"))
    init, modelcar = pod["spec"]["initContainers"]
    assert init["command"] == ["sh", "-c", INIT_SCRIPT]
    assert modelcar["command"] == ["sh", "-c", MODELCAR_SCRIPT]
    # kubelet turns $$$$ into $$ (the shell's own pid) and leaves "$NAME" for the shell.
    assert "/proc/$$$$/root/models" in MODELCAR_SCRIPT and f'"${LINK_ENV}"' in MODELCAR_SCRIPT
    assert "trap" in MODELCAR_SCRIPT and "wait" in MODELCAR_SCRIPT


def test_command_strings_never_change() -> None:
    # Golden values: every wired pod carries them; a change would make upgraded webhooks wire pods
    # differently from running ones. Never edit these literals.
    assert MODELCAR_SCRIPT == (
        'ln -sfn /proc/$$$$/root/models "$MODELCAR_MODEL_PATH" || exit 1; '
        "trap 'kill $! 2>/dev/null; exit 0' TERM INT; sleep infinity & wait"
    )
    assert INIT_SCRIPT == (
        '[ -d /models ] && [ -n "$$(ls -A /models)" ] && echo "OK: /models is present and not empty"'
        ' || { echo "NOK: /models is missing or empty in the model image"; exit 1; }'
    )


@pytest.mark.parametrize(
    ("names", "wired"),
    [
        (["kserve-container"], ["kserve-container"]),
        (["worker-container"], ["worker-container"]),
        (["kserve-container", "transformer-container"], ["kserve-container", "transformer-container"]),
        (["transformer-container", "worker-container"], ["worker-container", "transformer-container"]),
        (["kserve-container", "queue-proxy"], ["kserve-container"]),
    ],
)
def test_serving_and_transformer_containers_are_wired(names: list[str], wired: list[str]) -> None:
    _, pod = wire(make_pod(*names))
    for container in pod["spec"]["containers"]:
        mounted = "volumeMounts" in container
        assert mounted == (container["name"] in wired), container["name"]
        assert ("MODEL_INIT_MODE" in env_of(container)) == (container["name"] in wired)


def test_kserve_pod_without_a_serving_container_is_left_alone_with_a_warning() -> None:
    mutation = build_patch(pod=make_pod("something-else"), config=DEFAULT)
    assert mutation.denial is None and not mutation.patch
    assert "kserve-container" in mutation.warnings[0]


@pytest.mark.parametrize(
    "annotations",
    [
        {},
        {KSERVE: "s3://bucket/model"},
        {KSERVE: "pvc://claim/model"},
        {KSERVE: "oci+native://quay.io/acme/llama:1"},
        {KSERVE: 42},
        {"unrelated": "oci://quay.io/acme/llama:1"},
    ],
)
def test_pods_not_asking_for_a_modelcar_are_untouched(annotations: dict[str, Any]) -> None:
    assert (
        build_patch(pod=make_pod("kserve-container", annotations=annotations), config=DEFAULT) == Mutation()
    )


# -- idempotence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ALL_MODES, ids=lambda c: c.modelcar_mode)
@pytest.mark.parametrize(
    "pod",
    [
        make_pod("kserve-container"),
        make_pod("kserve-container", "transformer-container"),
        make_pod("vllm", annotations={MODEL_URI_ANNOTATION: PINNED}),
        make_pod("a", "b", annotations={MODEL_URI_ANNOTATION: PINNED, CONTAINER_ANNOTATION: "b,a"}),
    ],
)
def test_wiring_twice_changes_nothing(pod: dict[str, Any], config: WebhookConfig) -> None:
    first, wired = wire(pod, config)
    assert first.patch
    assert build_patch(pod=wired, config=config) == Mutation()


def test_a_pod_kserve_already_wired_is_left_alone() -> None:
    pod = make_pod("kserve-container")
    pod["spec"]["containers"].append({"name": "modelcar", "image": IMAGE})
    assert build_patch(pod=pod, config=DEFAULT) == Mutation()


def kserve_storage_initializer_pod(uri: str = PINNED) -> dict[str, Any]:
    """A pod as KServe v0.20 wires ``uri`` with its OCI modes off: its storage initializer."""
    provision = {"name": "kserve-provision-location", "mountPath": "/mnt/models"}
    initializer = {
        "name": "storage-initializer",
        "image": "kserve/storage-initializer:latest",
        "args": [uri, "/mnt/models"],
        "volumeMounts": [provision],
    }
    pod = make_pod(
        "kserve-container",
        annotations={KSERVE: uri},
        initContainers=[initializer],
        volumes=[{"name": "kserve-provision-location", "emptyDir": {}}],
    )
    shm = {"name": "shm", "mountPath": "/dev/shm"}
    pod["spec"]["containers"][0]["volumeMounts"] = [shm, provision | {"readOnly": True}]
    return pod


@pytest.mark.parametrize("config", [DEFAULT, SIDECAR])
def test_kserves_storage_initializer_for_an_oci_model_is_replaced_by_the_modelcar(
    config: WebhookConfig,
) -> None:
    mutation, pod = wire(kserve_storage_initializer_pod(), config)
    spec = pod["spec"]
    assert [c["name"] for c in spec["initContainers"]][:1] == ["modelcar-init"]
    assert "storage-initializer" not in {c["name"] for c in spec["initContainers"] + spec["containers"]}
    assert spec["volumes"] == [{"name": "kserve-provision-location", "emptyDir": {}}]
    server = spec["containers"][0]
    assert server["volumeMounts"] == [
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "kserve-provision-location", "mountPath": "/mnt"},
    ]
    assert any("replaced KServe's storage-initializer" in w for w in mutation.warnings)
    # KServe's webhook, reinvoked, adds its storage initializer wherever its annotation is.
    assert pod["metadata"]["annotations"] == {REPLACED_ANNOTATION: PINNED}
    assert build_patch(pod=pod, config=config) == Mutation()


def test_a_storage_initializer_for_another_uri_or_in_image_volume_mode_is_kept_and_denied() -> None:
    other = kserve_storage_initializer_pod()
    other["spec"]["initContainers"][0]["args"][0] = "s3://bucket/model"
    assert "already mounts volume 'kserve-provision-location'" in denial(other)
    assert "kserve-provision-location" in denial(kserve_storage_initializer_pod(), IMAGE_VOLUME)


def test_own_annotation_never_replaces_kserves_storage_initializer() -> None:
    pod = kserve_storage_initializer_pod()
    pod["metadata"]["annotations"] = {MODEL_URI_ANNOTATION: PINNED, CONTAINER_ANNOTATION: "kserve-container"}
    assert "already mounts volume 'kserve-provision-location'" in denial(pod)


# -- the project's own annotations ----------------------------------------------------------------


def test_own_annotation_with_container_and_mount_path() -> None:
    annotations = {
        MODEL_URI_ANNOTATION: PINNED,
        CONTAINER_ANNOTATION: "vllm",
        MOUNT_PATH_ANNOTATION: "/data/model",
    }
    _, pod = wire(make_pod("proxy", "vllm", annotations=annotations))
    proxy, vllm = pod["spec"]["containers"]
    assert "volumeMounts" not in proxy and "env" not in proxy
    assert vllm["volumeMounts"] == [{"name": "kserve-provision-location", "mountPath": "/data"}]
    modelcar = named(pod["spec"]["initContainers"], "modelcar")
    assert modelcar["volumeMounts"][0]["mountPath"] == "/data"
    assert env_of(modelcar) == {LINK_ENV: "/data/model"}


def test_own_annotation_wins_over_kserve_annotation() -> None:
    annotations = {KSERVE: "oci://quay.io/other/model:1", MODEL_URI_ANNOTATION: PINNED}
    _, pod = wire(make_pod("kserve-container", annotations=annotations))
    assert named(pod["spec"]["initContainers"], "modelcar")["image"] == IMAGE


def test_own_annotation_on_a_single_container_pod_needs_no_container_name() -> None:
    _, pod = wire(make_pod("vllm", annotations={MODEL_URI_ANNOTATION: PINNED}))
    assert pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/mnt"


@pytest.mark.parametrize(
    ("annotations", "names", "expected"),
    [
        ({MODEL_URI_ANNOTATION: PINNED}, ["a", "b"], "name the one serving the model"),
        ({MODEL_URI_ANNOTATION: PINNED, CONTAINER_ANNOTATION: "c"}, ["a"], "names c, not a container"),
        ({MODEL_URI_ANNOTATION: "s3://bucket/model"}, ["a"], "is not an oci:// URI"),
        ({MODEL_URI_ANNOTATION: "quay.io/acme/llama:1"}, ["a"], "is not an oci:// URI"),
        ({MODEL_URI_ANNOTATION: "oci+native://quay.io/a/b:1"}, ["a"], "is not an oci:// URI"),
        ({MODEL_URI_ANNOTATION: ["oci://x/y"]}, ["a"], "is not an oci:// URI"),
        ({MODEL_URI_ANNOTATION: "oci://"}, ["a"], "invalid model URI"),
        ({MODEL_URI_ANNOTATION: "oci://Quay.io/UPPER/case:1"}, ["a"], "invalid model URI"),
        ({MODEL_URI_ANNOTATION: "oci://quay.io/a/b@sha256:123"}, ["a"], "invalid digest"),
        ({KSERVE: "oci://quay.io/a/b:bad tag"}, ["kserve-container"], "invalid model URI"),
        ({MODEL_URI_ANNOTATION: PINNED, MOUNT_PATH_ANNOTATION: "models"}, ["a"], "absolute path"),
        ({MODEL_URI_ANNOTATION: PINNED, MOUNT_PATH_ANNOTATION: "/models"}, ["a"], "parent directory"),
        ({MODEL_URI_ANNOTATION: PINNED, MOUNT_PATH_ANNOTATION: "/a/../b"}, ["a"], "normalized"),
        ({MODEL_URI_ANNOTATION: PINNED, MOUNT_PATH_ANNOTATION: '/m/$(x)"'}, ["a"], "may not contain"),
    ],
)
def test_bad_requests_are_denied_with_the_reason(
    annotations: dict[str, Any], names: list[str], expected: str
) -> None:
    assert expected in denial(make_pod(*names, annotations=annotations))


# -- conflicts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (
            make_pod("kserve-container", volumes=[{"name": "kserve-provision-location", "configMap": {}}]),
            "already has a volume named kserve-provision-location",
        ),
        (
            make_pod("kserve-container", initContainers=[{"name": "modelcar-init", "image": "x"}]),
            "already has a container named modelcar-init",
        ),
        (make_pod("kserve-container", hostPID=True), "hostPID"),
    ],
)
def test_pod_level_conflicts_are_denied(pod: dict[str, Any], expected: str) -> None:
    assert expected in denial(pod)


@pytest.mark.parametrize(
    ("config", "mount_path"),
    [
        (DEFAULT, "/mnt"),
        (DEFAULT, "/mnt/"),
        (DEFAULT, "/mnt/models"),
        (DEFAULT, "//mnt"),
        (DEFAULT, "///mnt/./models"),
        (DEFAULT, "mnt"),
        (SIDECAR, "/mnt/models/x"),
        (SIDECAR, "//mnt/models/x"),
        (IMAGE_VOLUME, "/mnt/models"),
        (IMAGE_VOLUME, "/mnt/models/sub"),
    ],
)
def test_an_existing_mount_where_the_model_goes_is_denied(config: WebhookConfig, mount_path: str) -> None:
    pod = make_pod("kserve-container", volumes=[{"name": "cache", "emptyDir": {}}])
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "cache", "mountPath": mount_path}]
    assert "where the model goes" in denial(pod, config)


def test_mounts_elsewhere_and_kserve_emptydir_are_kept_and_reused() -> None:
    volumes = [{"name": "kserve-provision-location", "emptyDir": {}}, {"name": "shm", "emptyDir": {}}]
    pod = make_pod("kserve-container", volumes=volumes)
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "kserve-provision-location", "mountPath": "/mnt"},
    ]
    mutation, wired = wire(pod)
    assert not any(op["path"].startswith("/spec/volumes") for op in mutation.patch)
    assert wired["spec"]["containers"][0]["volumeMounts"] == pod["spec"]["containers"][0]["volumeMounts"]


def test_existing_lists_are_appended_to() -> None:
    pod = make_pod("kserve-container", initContainers=[{"name": "setup", "image": "x"}])
    pod["spec"]["containers"][0]["env"] = [{"name": "PORT", "value": "8080"}]
    _, wired = wire(pod)
    assert [c["name"] for c in wired["spec"]["initContainers"]] == ["setup", "modelcar-init", "modelcar"]
    assert list(env_of(wired["spec"]["containers"][0])) == [
        "PORT",
        "MODEL_INIT_MODE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
    ]


# -- digest discipline ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "latest"),
    [
        ("oci://quay.io/acme/llama:1.0", False),
        ("oci://quay.io/acme/llama:latest", True),
        ("oci://quay.io/acme/llama", True),
        ("oci://llama", True),
    ],
)
def test_tags_are_warned_about_and_left_to_the_default_pull_policy(uri: str, latest: bool) -> None:
    mutation, pod = wire(make_pod("kserve-container", annotations={KSERVE: uri}))
    (warning,) = mutation.warnings
    assert "not pinned to a digest" in warning and ("pulled again" in warning) == latest
    for container in pod["spec"]["initContainers"]:
        assert "imagePullPolicy" not in container


def test_tags_are_denied_or_allowed_per_config() -> None:
    pod = make_pod("kserve-container", annotations={KSERVE: "oci://quay.io/acme/llama:1.0"})
    assert "not pinned" in denial(pod, dataclasses.replace(DEFAULT, tag_policy="deny"))
    assert build_patch(pod=pod, config=dataclasses.replace(DEFAULT, tag_policy="allow")).warnings == ()


@pytest.mark.parametrize("config", ALL_MODES, ids=lambda c: c.modelcar_mode)
def test_digests_are_pulled_if_not_present(config: WebhookConfig) -> None:
    mutation, pod = wire(make_pod("kserve-container"), config)
    assert mutation.warnings == ()
    if config.modelcar_mode == "image-volume":
        assert pod["spec"]["volumes"][0]["image"]["pullPolicy"] == "IfNotPresent"
    else:
        for container in pod["spec"]["initContainers"]:
            assert container["imagePullPolicy"] == "IfNotPresent"


# -- environment ----------------------------------------------------------------------------------


def test_offline_env_respects_the_pod_and_kserve_env_is_replaced() -> None:
    pod = make_pod("kserve-container")
    pod["spec"]["containers"][0]["env"] = [
        {"name": "HF_HUB_OFFLINE", "value": "0"},
        {"name": "MODEL_INIT_MODE", "value": "sync"},
    ]
    _, wired = wire(pod)
    assert env_of(wired["spec"]["containers"][0]) == {
        "HF_HUB_OFFLINE": "0",
        "MODEL_INIT_MODE": "async",
        "TRANSFORMERS_OFFLINE": "1",
    }


def test_offline_env_can_be_disabled() -> None:
    _, wired = wire(make_pod("kserve-container"), dataclasses.replace(DEFAULT, offline_env=()))
    assert env_of(wired["spec"]["containers"][0]) == {"MODEL_INIT_MODE": "async"}


# -- image volume mode ----------------------------------------------------------------------------


def test_image_volume_mode_mounts_the_image_read_only_without_a_sidecar() -> None:
    _, pod = wire(make_pod("kserve-container", "transformer-container"), IMAGE_VOLUME)
    spec = pod["spec"]
    assert spec["volumes"] == [
        {"name": "kserve-provision-location", "image": {"reference": IMAGE, "pullPolicy": "IfNotPresent"}}
    ]
    assert "shareProcessNamespace" not in spec and "initContainers" not in spec
    for container in spec["containers"]:
        assert container["volumeMounts"] == [
            {
                "name": "kserve-provision-location",
                "mountPath": "/mnt/models",
                "subPath": "models",
                "readOnly": True,
            }
        ]
        assert "securityContext" not in container


# -- non-root and Pod Security "restricted" -------------------------------------------------------

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral"}
RESTRICTED_VOLUMES |= {"persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What the Pod Security "restricted" level (v1.32) would reject in ``pod``."""
    spec = pod["spec"]
    pod_context = spec.get("securityContext", {})
    problems = []
    for volume in spec.get("volumes", []):
        if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}")
    for container in spec.get("initContainers", []) + spec["containers"]:
        context = container.get("securityContext", {})
        merged = {**pod_context, **context}
        name = container["name"]
        if merged.get("runAsNonRoot") is not True or merged.get("runAsUser") == 0:
            problems.append(f"{name}: may run as root")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: privilege escalation")
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: capabilities")
        if merged.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccomp")
    return problems


@pytest.mark.parametrize("config", [DEFAULT, SIDECAR], ids=lambda c: c.modelcar_mode)
def test_a_restricted_pod_stays_restricted(config: WebhookConfig) -> None:
    pod = make_pod("kserve-container", securityContext=RESTRICTED_POD)
    pod["spec"]["containers"][0]["securityContext"] = dict(RESTRICTED_CONTAINER)
    assert restricted_violations(pod) == []
    _, wired = wire(pod, config)
    assert restricted_violations(wired) == []
    assert "seccompProfile" not in wired["spec"]["initContainers"][0]["securityContext"]


def test_without_pod_seccomp_the_injected_containers_bring_their_own() -> None:
    _, wired = wire(make_pod("kserve-container"))
    for container in wired["spec"]["initContainers"]:
        assert container["securityContext"] == {
            "runAsUser": 1010,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }


def test_plain_kserve_security_context_when_hardening_is_off() -> None:
    config = dataclasses.replace(SIDECAR, restricted_security_context=False)
    _, wired = wire(make_pod("kserve-container"), config)
    assert wired["spec"]["containers"][1]["securityContext"] == {"runAsUser": 1010}


@pytest.mark.parametrize(
    ("pod_context", "server_context", "uid", "server_changed"),
    [
        ({}, {"runAsUser": 1001, "readOnlyRootFilesystem": True}, 1001, False),
        ({"runAsUser": 1000680000}, {}, 1000680000, False),
        ({"runAsUser": 5}, {"runAsUser": 7}, 7, False),
        ({}, {"readOnlyRootFilesystem": True}, 1010, True),
        ({"runAsUser": 0}, {}, 0, False),
    ],
)
def test_the_modelcar_shares_the_uid_the_server_already_has(
    pod_context: dict[str, Any], server_context: dict[str, Any], uid: int, server_changed: bool
) -> None:
    pod = make_pod("kserve-container", securityContext=pod_context)
    pod["spec"]["containers"][0]["securityContext"] = dict(server_context)
    _, wired = wire(pod)
    server = wired["spec"]["containers"][0]
    expected = {**server_context, "runAsUser": uid} if server_changed else server_context
    assert server["securityContext"] == expected
    for container in wired["spec"]["initContainers"]:
        assert container["securityContext"]["runAsUser"] == uid
        assert container["securityContext"].get("runAsNonRoot") is (True if uid else None)


def test_an_explicit_group_is_shared_and_given_to_every_wired_container() -> None:
    pod = make_pod("kserve-container", "transformer-container")
    pod["spec"]["containers"][0]["securityContext"] = {"runAsGroup": 3000}
    mutation, wired = wire(pod)
    server, transformer = wired["spec"]["containers"]
    assert server["securityContext"] == {"runAsGroup": 3000, "runAsUser": 1010}
    assert transformer["securityContext"] == {"runAsUser": 1010, "runAsGroup": 3000}
    for container in wired["spec"]["initContainers"]:
        assert (container["securityContext"]["runAsUser"], container["securityContext"]["runAsGroup"]) == (
            1010,
            3000,
        )
    assert mutation.warnings == ()


def test_a_pod_level_identity_is_copied_to_the_modelcar_only() -> None:
    pod = make_pod("kserve-container", securityContext={"runAsUser": 1000, "runAsGroup": 1000})
    mutation, wired = wire(pod)
    assert "securityContext" not in wired["spec"]["containers"][0]
    modelcar = wired["spec"]["initContainers"][1]
    assert (modelcar["securityContext"]["runAsUser"], modelcar["securityContext"]["runAsGroup"]) == (
        1000,
        1000,
    )
    assert mutation.warnings == ()


def test_a_kept_uid_without_a_group_is_warned_about() -> None:
    pod = make_pod("kserve-container", securityContext={"runAsUser": 1000})
    mutation, wired = wire(pod)
    assert "sets no runAsGroup" in mutation.warnings[0]
    assert "runAsGroup" not in wired["spec"]["initContainers"][1]["securityContext"]


def test_servers_with_different_gids_cannot_share_a_modelcar() -> None:
    pod = make_pod("kserve-container", "transformer-container", securityContext={"runAsGroup": 5})
    pod["spec"]["containers"][1]["securityContext"] = {"runAsGroup": 6}
    assert "different gids" in denial(pod)


def test_servers_with_different_uids_cannot_share_a_modelcar() -> None:
    pod = make_pod("kserve-container", "transformer-container")
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": 1000}
    pod["spec"]["containers"][1]["securityContext"] = {"runAsUser": 2000}
    message = denial(pod)
    assert "different uids" in message and "kserve-container as 1000" in message


def test_root_server_in_a_non_root_pod_is_denied_with_the_reason() -> None:
    pod = make_pod("kserve-container", securityContext={"runAsNonRoot": True})
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": 0}
    assert "runs as uid 0 but the pod requires runAsNonRoot" in denial(pod)


def test_without_a_uid_anywhere_the_platform_is_trusted_with_a_warning() -> None:
    mutation, wired = wire(make_pod("kserve-container"), dataclasses.replace(DEFAULT, uid_modelcar=None))
    assert "relying on the platform" in mutation.warnings[0]
    assert "securityContext" not in wired["spec"]["containers"][0]
    assert "runAsUser" not in wired["spec"]["initContainers"][1]["securityContext"]


# -- malformed pods -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pod",
    [
        {"metadata": {"annotations": {KSERVE: PINNED}}, "spec": "nope"},
        {"metadata": {"annotations": {KSERVE: PINNED}}, "spec": {"containers": "nope"}},
        {"metadata": {"annotations": {KSERVE: PINNED}}, "spec": {"containers": [{"image": "x"}]}},
        {"metadata": {"annotations": {KSERVE: PINNED}}, "spec": {"containers": [1]}},
        {"metadata": {"annotations": "nope"}},
        {"metadata": []},
        make_pod("kserve-container", volumes={"a": 1}),
        make_pod("kserve-container", securityContext={"runAsUser": "root"}),
    ],
)
def test_malformed_pods_are_denied_not_raised(pod: dict[str, Any]) -> None:
    assert "malformed pod" in denial(pod)


def test_server_env_of_the_wrong_shape_is_denied() -> None:
    pod = make_pod("kserve-container")
    pod["spec"]["containers"][0]["env"] = {"A": "1"}
    assert "spec.containers[0].env" in denial(pod)


# -- properties -----------------------------------------------------------------------------------

_names = st.sampled_from(["kserve-container", "worker-container", "transformer-container", "vllm", "proxy"])
_env = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["HF_HUB_OFFLINE", "MODEL_INIT_MODE", "PORT"]), "value": st.text(max_size=3)}
    ),
    max_size=3,
)
_container = st.fixed_dictionaries(
    {"name": _names, "image": st.just("runtime:1")},
    optional={
        "env": _env,
        "volumeMounts": st.lists(
            st.fixed_dictionaries(
                {"name": st.just("cache"), "mountPath": st.sampled_from(["/cache", "/dev/shm"])}
            ),
            max_size=2,
        ),
        "securityContext": st.fixed_dictionaries(
            {}, optional={"runAsUser": st.sampled_from([1001, 2000]), "runAsGroup": st.sampled_from([0, 7])}
        ),
    },
)
_annotations = st.one_of(
    st.fixed_dictionaries({KSERVE: st.sampled_from([PINNED, "oci://quay.io/a/b:1", "s3://b/m"])}),
    st.fixed_dictionaries(
        {MODEL_URI_ANNOTATION: st.sampled_from([PINNED, "oci://registry.local:5000/m"])},
        optional={
            CONTAINER_ANNOTATION: _names,
            MOUNT_PATH_ANNOTATION: st.sampled_from(["/models/m", "/mnt/models"]),
        },
    ),
)
_pods = st.builds(
    lambda annotations, containers, extra: {
        "metadata": {"annotations": annotations},
        "spec": {"containers": list({c["name"]: c for c in containers}.values()), **extra},
    },
    _annotations,
    st.lists(_container, min_size=1, max_size=3),
    st.fixed_dictionaries(
        {},
        optional={
            "volumes": st.just([{"name": "cache", "emptyDir": {}}]),
            "initContainers": st.just([{"name": "setup", "image": "x"}]),
            "shareProcessNamespace": st.booleans(),
            "securityContext": st.fixed_dictionaries(
                {}, optional={"runAsUser": st.sampled_from([1001, 3000])}
            ),
        },
    ),
)


@settings(max_examples=300, deadline=None)
@given(pod=_pods, config=st.sampled_from(ALL_MODES))
def test_any_wired_pod_is_wired_once_and_consistently(pod: dict[str, Any], config: WebhookConfig) -> None:
    mutation = build_patch(pod=pod, config=config)
    if mutation.denial is not None:
        assert not mutation.patch
        return
    if not mutation.patch:
        return
    wired = apply_patch(pod, list(mutation.patch))
    assert build_patch(pod=wired, config=config) == Mutation()
    spec = wired["spec"]
    names = [c["name"] for c in spec["containers"] + spec.get("initContainers", [])]
    assert len(names) == len(set(names))
    if config.modelcar_mode != "image-volume":
        assert spec["shareProcessNamespace"] is True
        modelcar = named(spec["initContainers"] + spec["containers"], "modelcar")
        pod_context = spec.get("securityContext", {})
        for field in ("runAsUser", "runAsGroup"):
            shared = modelcar["securityContext"].get(field)
            for container in spec["containers"]:
                if any(m["name"] == "kserve-provision-location" for m in container.get("volumeMounts", [])):
                    own = container.get("securityContext", {}).get(field, pod_context.get(field))
                    assert own == shared, (field, container["name"])
