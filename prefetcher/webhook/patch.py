"""Builds the JSONPatch (RFC 6902) that wires one pod to its model image. Pure: no I/O, no logging.

Trigger: KServe's source-URI annotation with an ``oci://`` value (other schemes are KServe's
storage initializer's business and are left alone), or this project's annotations for other
workloads: ``modelcar-prefetcher.io/model-uri`` (``oci://`` only), optionally
``modelcar-prefetcher.io/container`` (comma-separated names) and ``…/mount-path``.

KServe with its OCI modes off gives an ``oci://`` pod its storage initializer instead: the modelcar
takes its place (``initializer``).

Idempotence: a pod that already has the modelcar container (or, in image-volume mode, the image
volume) gets no operations, so ``reinvocationPolicy: IfNeeded`` and KServe's own injector, in
either order, never wire a pod twice.

A pod that asks to be wired but cannot be wired correctly is denied with the reason: started
unwired, its server would look for a model that is not there. A KServe pod without a serving
container is allowed unchanged with a warning, as KServe may serve it another way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefetcher.core.refs import parse_reference
from prefetcher.errors import InvalidReferenceError
from prefetcher.webhook import containers as build
from prefetcher.webhook.config import AdmissionTagPolicy, ModelcarMode, WebhookConfig, check_model_path
from prefetcher.webhook.initializer import STORAGE_INITIALIZER, replace_storage_initializer
from prefetcher.webhook.podview import PodView, WiringError, canonical_path, mapping
from prefetcher.webhook.security import Identity, plan_identity

ANNOTATION_PREFIX = "modelcar-prefetcher.io/"
MODEL_URI_ANNOTATION = ANNOTATION_PREFIX + "model-uri"
CONTAINER_ANNOTATION = ANNOTATION_PREFIX + "container"
MOUNT_PATH_ANNOTATION = ANNOTATION_PREFIX + "mount-path"
OCI_SCHEME = "oci://"
Op = dict[str, Any]


@dataclass(frozen=True)
class Mutation:
    """The answer for one pod: JSONPatch operations and warnings, or a denial with its reason."""

    patch: tuple[Op, ...] = ()
    warnings: tuple[str, ...] = ()
    denial: str | None = None


@dataclass(frozen=True)
class _Trigger:
    annotation: str
    uri: str
    containers: tuple[str, ...]
    model_path: str

    @property
    def explicit(self) -> bool:
        return self.annotation == MODEL_URI_ANNOTATION


def build_patch(*, pod: Mapping[str, Any], config: WebhookConfig) -> Mutation:
    """The mutation wiring ``pod`` as ``config`` says; malformed pods are denied, never raised."""
    try:
        return _build(pod, config)
    except WiringError as error:
        return Mutation(denial=str(error))


def _build(pod: Mapping[str, Any], config: WebhookConfig) -> Mutation:
    metadata = mapping(pod, "metadata", "metadata")
    trigger = _trigger(mapping(metadata, "annotations", "metadata.annotations"), config)
    if trigger is None:
        return Mutation()
    view = PodView.read(pod)
    if _already_wired(view, config):
        return Mutation()
    image, pull_policy, warnings = _image(trigger, config)
    replaced: list[Op] = []
    if not trigger.explicit and config.modelcar_mode != ModelcarMode.IMAGE_VOLUME:
        replaced, view = replace_storage_initializer(
            view, annotation=trigger.annotation, uri=trigger.uri, model_path=trigger.model_path, config=config
        )
    if replaced:
        warnings.append(
            f"replaced KServe's {STORAGE_INITIALIZER} for {trigger.uri} with the modelcar"
            " (KServe's OCI model mode is off)"
        )
    targets = _targets(trigger, view, config)
    if not targets:
        wanted = " or ".join(config.serving_containers) or "(none configured)"
        return Mutation(warnings=(f"no container named {wanted}: pod left unwired",))
    _check_conflicts(view, targets, trigger.model_path, config)
    if config.modelcar_mode == ModelcarMode.IMAGE_VOLUME:
        volume = build.image_volume(config, image=image, pull_policy=pull_policy)
        ops = _extend("/spec/volumes", view.spec.get("volumes"), [volume])
        ops += _wire_containers(view, targets, trigger.model_path, config)
        return Mutation(patch=tuple(ops), warnings=tuple(warnings))
    ops, uid_warnings = _sidecar_ops(
        view, targets, trigger=trigger, image=image, pull_policy=pull_policy, config=config
    )
    return Mutation(patch=tuple(replaced + ops), warnings=tuple(warnings + uid_warnings))


def _trigger(annotations: Mapping[str, Any], config: WebhookConfig) -> _Trigger | None:
    own = annotations.get(MODEL_URI_ANNOTATION)
    if own is None:
        uri = annotations.get(config.source_uri_annotation)
        if isinstance(uri, str) and uri.startswith(OCI_SCHEME):
            return _Trigger(config.source_uri_annotation, uri, (), config.model_path)
        return None
    if not isinstance(own, str) or not own.strip().startswith(OCI_SCHEME):
        raise WiringError(
            f"annotation {MODEL_URI_ANNOTATION}: {own!r} is not an oci:// URI"
            " (expected oci://registry/repository@sha256:<digest>)"
        )
    names = annotations.get(CONTAINER_ANNOTATION, "")
    path = annotations.get(MOUNT_PATH_ANNOTATION, config.model_path)
    if not isinstance(names, str) or not isinstance(path, str):
        raise WiringError(f"annotations {CONTAINER_ANNOTATION} and {MOUNT_PATH_ANNOTATION} must be strings")
    try:
        check_model_path(path)
    except ValueError as error:
        raise WiringError(f"annotation {MOUNT_PATH_ANNOTATION}: {path!r}: {error}") from error
    wanted = tuple(dict.fromkeys(name.strip() for name in names.split(",") if name.strip()))
    return _Trigger(MODEL_URI_ANNOTATION, own.strip(), wanted, path)


def _already_wired(view: PodView, config: WebhookConfig) -> bool:
    if config.modelcar_container_name in view.all_names:
        return True
    volume = view.volume(config.volume_name)
    return config.modelcar_mode == ModelcarMode.IMAGE_VOLUME and volume is not None and "image" in volume


def _image(trigger: _Trigger, config: WebhookConfig) -> tuple[str, str | None, list[str]]:
    try:
        ref = parse_reference(trigger.uri)
    except InvalidReferenceError as error:
        raise WiringError(f"annotation {trigger.annotation}: invalid model URI: {error}") from error
    image = trigger.uri.strip()[len(OCI_SCHEME) :]
    if ref.pinned:
        return image, "IfNotPresent", []
    if config.tag_policy == AdmissionTagPolicy.ALLOW:
        return image, None, []
    latest = ref.tag is None or ref.tag == "latest"
    problem = (
        f"model image {image} is not pinned to a digest"
        + (" (no tag or :latest is pulled again on every start)" if latest else "")
        + "; use oci://<image>@sha256:<digest> so nodes cache exactly one image"
    )
    if config.tag_policy == AdmissionTagPolicy.DENY:
        raise WiringError(problem)
    return image, None, [problem]


def _targets(trigger: _Trigger, view: PodView, config: WebhookConfig) -> list[int]:
    names = view.container_names
    if trigger.containers:
        missing = [name for name in trigger.containers if name not in names]
        if missing:
            raise WiringError(
                f"annotation {CONTAINER_ANNOTATION} names {', '.join(missing)},"
                f" not a container of this pod (containers: {', '.join(names)})"
            )
        return [names.index(name) for name in trigger.containers]
    serving = next((name for name in config.serving_containers if name in names), None)
    if serving is None:
        if trigger.explicit and len(names) == 1:
            return [0]
        if trigger.explicit:
            raise WiringError(
                f"pod has {len(names)} containers; name the one serving the model with"
                f" annotation {CONTAINER_ANNOTATION}"
            )
        return []
    extra = [name for name in config.additional_containers if name in names and name != serving]
    return [names.index(name) for name in [serving, *extra]]


def _check_conflicts(view: PodView, targets: list[int], model_path: str, config: WebhookConfig) -> None:
    sidecar = config.modelcar_mode != ModelcarMode.IMAGE_VOLUME
    if sidecar and config.init_container_name in view.all_names:
        raise WiringError(f"pod already has a container named {config.init_container_name}")
    volume = view.volume(config.volume_name)
    if volume is not None and (not sidecar or set(volume) != {"name", "emptyDir"}):
        raise WiringError(
            f"pod already has a volume named {config.volume_name} that is not an emptyDir"
            " the webhook can share; rename it or set volumeName in the webhook config"
        )
    if sidecar and view.spec.get("hostPID") is True:
        raise WiringError("hostPID pods cannot share a process namespace with the modelcar")
    mount_dir = build.parent(model_path)
    for index in targets:
        for mount in view.mounts(index):
            path = canonical_path(mount.get("mountPath"))
            reused = sidecar and path == mount_dir and mount.get("name") == config.volume_name
            if reused:
                continue
            if path == model_path or path.startswith(model_path + "/") or (sidecar and path == mount_dir):
                raise WiringError(
                    f"container {view.container_names[index]} already mounts volume"
                    f" {mount.get('name')!r} at {path}, where the model goes ({model_path})"
                )


def _sidecar_ops(
    view: PodView,
    targets: list[int],
    *,
    trigger: _Trigger,
    image: str,
    pull_policy: str | None,
    config: WebhookConfig,
) -> tuple[list[Op], list[str]]:
    identity = plan_identity(view, targets, config)
    ops: list[Op] = []
    if view.volume(config.volume_name) is None:
        ops += _extend("/spec/volumes", view.spec.get("volumes"), [build.empty_dir_volume(config)])
    if view.spec.get("shareProcessNamespace") is not True:
        ops.append({"op": "add", "path": "/spec/shareProcessNamespace", "value": True})
    ops += _wire_containers(view, targets, trigger.model_path, config)
    ops += _set_identity(view, identity)
    has_seccomp = "seccompProfile" in view.pod_security()
    security = build.security_context(config, uid=identity.uid, gid=identity.gid, pod_has_seccomp=has_seccomp)
    native = config.modelcar_mode == ModelcarMode.NATIVE_SIDECAR
    init = build.init_container(config, image=image, pull_policy=pull_policy, security=security)
    modelcar = build.modelcar_container(
        config,
        image=image,
        model_path=trigger.model_path,
        pull_policy=pull_policy,
        security=security,
        native=native,
    )
    init_list = [init, modelcar] if native else [init]
    ops += _extend("/spec/initContainers", view.spec.get("initContainers"), init_list)
    if not native:
        ops += _extend("/spec/containers", view.spec.get("containers"), [modelcar])
    return ops, list(identity.warnings)


def _wire_containers(view: PodView, targets: list[int], model_path: str, config: WebhookConfig) -> list[Op]:
    image_volume = config.modelcar_mode == ModelcarMode.IMAGE_VOLUME
    mount = build.server_mount(config, model_path=model_path, image_volume=image_volume)
    ops: list[Op] = []
    for index in targets:
        base = f"/spec/containers/{index}"
        mounts = view.mounts(index)
        present = any(
            m.get("name") == mount["name"] and canonical_path(m.get("mountPath")) == mount["mountPath"]
            for m in mounts
        )
        if not present:
            ops += _extend(f"{base}/volumeMounts", view.containers[index].get("volumeMounts"), [mount])
        ops += _env_ops(base, view.containers[index].get("env"), view.env(index), config)
    return ops


def _env_ops(base: str, raw: Any, env: list[Mapping[str, Any]], config: WebhookConfig) -> list[Op]:
    names = [entry.get("name") for entry in env]
    ops: list[Op] = []
    added: list[dict[str, str]] = []
    for name, value in config.serving_env:
        if name not in names:
            added.append({"name": name, "value": value})
        elif env[names.index(name)] != {"name": name, "value": value}:
            # KServe replaces MODEL_INIT_MODE whatever the pod said (AddOrReplaceEnv).
            path = f"{base}/env/{names.index(name)}"
            ops.append({"op": "replace", "path": path, "value": {"name": name, "value": value}})
    taken = set(names) | {entry["name"] for entry in added}
    added += [{"name": n, "value": v} for n, v in config.offline_env if n not in taken]
    return ops + _extend(f"{base}/env", raw, added)


def _set_identity(view: PodView, identity: Identity) -> list[Op]:
    """Give wired containers the shared uid/gid (only those fields of their security context)."""
    ops: list[Op] = []
    for index in sorted(set(identity.set_uid_on) | set(identity.set_gid_on)):
        fields: dict[str, Any] = {}
        if index in identity.set_uid_on:
            fields["runAsUser"] = identity.uid
        if index in identity.set_gid_on:
            fields["runAsGroup"] = identity.gid
        base = f"/spec/containers/{index}/securityContext"
        if view.containers[index].get("securityContext") is None:
            ops.append({"op": "add", "path": base, "value": fields})
        else:
            ops += [{"op": "add", "path": f"{base}/{key}", "value": value} for key, value in fields.items()]
    return ops


def _extend(path: str, current: Any, new: list[Any]) -> list[Op]:
    """Append ``new`` to the list at ``path``, creating the list when it is absent."""
    if not new:
        return []
    if current is None:
        return [{"op": "add", "path": path, "value": list(new)}]
    return [{"op": "add", "path": f"{path}/-", "value": item} for item in new]
