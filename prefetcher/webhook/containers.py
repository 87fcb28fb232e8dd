"""The containers and volumes the webhook injects, as plain Kubernetes JSON. Pure.

The shell snippets are written for the pod spec, where kubelet rewrites ``$$`` to ``$`` and
``$(VAR)`` to the variable's value before the container starts; ``$`` followed by anything else
is left alone, so ``"$MODELCAR_MODEL_PATH"`` and ``$!`` reach the shell unchanged.
"""

from __future__ import annotations

from typing import Any

from prefetcher.webhook.config import WebhookConfig

# The modelcar's only environment variable: where to create the link. Passing the path this way
# keeps MODELCAR_SCRIPT the same whatever ``modelPath`` a pod uses.
LINK_ENV = "MODELCAR_MODEL_PATH"

# NEVER CHANGE THIS STRING. It is part of the spec of every pod this webhook has wired; a
# different command in a new release makes wired workloads differ from new ones and, wherever a
# controller compares specs, restarts them on upgrade (a known KServe sore point).
# What it does: link the model directory of this container's root filesystem, reached through
# /proc/<own pid>/root (``$$$$`` is ``$$`` after kubelet), at the path the server reads; then wait
# on a background ``sleep`` so that SIGTERM runs the trap at once and the container exits 0. As
# PID 1 of its own namespace an untrapped SIGTERM is ignored and ``sleep infinity`` would hold the
# pod for its whole grace period; and a trap only runs after a *foreground* child exits, hence
# ``& wait``. (With the pod's shared process namespace the pause process is PID 1; the trap then
# turns a death by signal, status 143, into a clean exit.)
MODELCAR_SCRIPT = (
    'ln -sfn /proc/$$$$/root/models "$MODELCAR_MODEL_PATH" || exit 1; '
    "trap 'kill $! 2>/dev/null; exit 0' TERM INT; "
    "sleep infinity & wait"
)
MODELCAR_COMMAND = ("sh", "-c", MODELCAR_SCRIPT)

# NEVER CHANGE THIS STRING either (same reason). KServe's pre-pull check: the init container runs
# the model image, so kubelet pulls it before the server starts, and fails clearly when the image
# has no non-empty /models. ``$$(`` is ``$(`` after kubelet: command substitution in the shell.
INIT_SCRIPT = (
    '[ -d /models ] && [ -n "$$(ls -A /models)" ] '
    '&& echo "OK: /models is present and not empty" '
    '|| { echo "NOK: /models is missing or empty in the model image"; exit 1; }'
)
INIT_COMMAND = ("sh", "-c", INIT_SCRIPT)

# Native sidecar only: kubelet starts the containers after this one once this probe passes, that
# is once the link resolves to the model directory (the trailing slash makes ``test`` follow it).
STARTUP_PROBE_COMMAND = ("sh", "-c", 'test -d "$MODELCAR_MODEL_PATH/"')
STARTUP_PROBE_PERIOD_SECONDS = 1
STARTUP_PROBE_FAILURE_THRESHOLD = 60


def resources(config: WebhookConfig) -> dict[str, Any]:
    """Requests equal to limits, as KServe sets them (Guaranteed-friendly)."""
    amounts = {"cpu": config.cpu_modelcar, "memory": config.memory_modelcar}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def security_context(
    config: WebhookConfig, *, uid: int | None, gid: int | None, pod_has_seccomp: bool
) -> dict[str, Any]:
    """The injected containers' security context: the shared uid and gid, hardened when configured."""
    context: dict[str, Any] = {} if uid is None else {"runAsUser": uid}
    if gid is not None:
        context["runAsGroup"] = gid
    if not config.restricted_security_context:
        return context
    if uid is not None and uid != 0:
        context["runAsNonRoot"] = True
    context["allowPrivilegeEscalation"] = False
    context["capabilities"] = {"drop": ["ALL"]}
    if not pod_has_seccomp:
        context["seccompProfile"] = {"type": "RuntimeDefault"}
    return context


def init_container(
    config: WebhookConfig, *, image: str, pull_policy: str | None, security: dict[str, Any]
) -> dict[str, Any]:
    """The pre-pull check ``modelcar-init``."""
    container: dict[str, Any] = {
        "name": config.init_container_name,
        "image": image,
        "command": list(INIT_COMMAND),
        "resources": resources(config),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return _finish(container, pull_policy=pull_policy, security=security)


def modelcar_container(
    config: WebhookConfig,
    *,
    image: str,
    model_path: str,
    pull_policy: str | None,
    security: dict[str, Any],
    native: bool,
) -> dict[str, Any]:
    """The ``modelcar`` container linking the model; a native sidecar when ``native``."""
    container: dict[str, Any] = {
        "name": config.modelcar_container_name,
        "image": image,
        "command": list(MODELCAR_COMMAND),
        "env": [{"name": LINK_ENV, "value": model_path}],
        "resources": resources(config),
        "volumeMounts": [{"name": config.volume_name, "mountPath": parent(model_path)}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if native:
        container["restartPolicy"] = "Always"
        container["startupProbe"] = {
            "exec": {"command": list(STARTUP_PROBE_COMMAND)},
            "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
            "failureThreshold": STARTUP_PROBE_FAILURE_THRESHOLD,
        }
    return _finish(container, pull_policy=pull_policy, security=security)


def empty_dir_volume(config: WebhookConfig) -> dict[str, Any]:
    """The shared emptyDir holding the link."""
    return {"name": config.volume_name, "emptyDir": {}}


def image_volume(config: WebhookConfig, *, image: str, pull_policy: str | None) -> dict[str, Any]:
    """The model image mounted as a Kubernetes image volume (KServe's ``oci+native://``)."""
    source: dict[str, Any] = {"reference": image}
    if pull_policy:
        source["pullPolicy"] = pull_policy
    return {"name": config.volume_name, "image": source}


def server_mount(config: WebhookConfig, *, model_path: str, image_volume: bool) -> dict[str, Any]:
    """The mount added to each wired container."""
    if image_volume:
        return {
            "name": config.volume_name,
            "mountPath": model_path,
            "subPath": "models",
            "readOnly": True,
        }
    return {"name": config.volume_name, "mountPath": parent(model_path)}


def parent(path: str) -> str:
    """The directory holding ``path`` (paths are validated: absolute and normalized)."""
    return path.rsplit("/", 1)[0]


def _finish(
    container: dict[str, Any], *, pull_policy: str | None, security: dict[str, Any]
) -> dict[str, Any]:
    if pull_policy:
        container["imagePullPolicy"] = pull_policy
    if security:
        container["securityContext"] = security
    return container
