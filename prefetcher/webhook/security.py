"""Which uid the modelcar and the servers share. Pure.

The server reads the model through ``/proc/<modelcar pid>/root``, which the kernel only allows
to a process of the same uid (ptrace "read" access), so every wired container and the modelcar
must run as one uid. KServe overwrites the server's security context with ``uidModelcar``; here
a uid the pod already chose (its own, or one a platform such as OpenShift assigned) is kept and
shared with the modelcar, and ``uidModelcar`` only fills the gap.
"""

from __future__ import annotations

from prefetcher.webhook.config import WebhookConfig
from prefetcher.webhook.podview import PodView, WiringError, optional_int


def plan_uid(
    view: PodView, targets: list[int], config: WebhookConfig
) -> tuple[int | None, list[int], list[str]]:
    """The shared uid, the wired containers that must be given it, and warnings."""
    pod_security = view.pod_security()
    pod_uid = optional_int(pod_security, "runAsUser", "spec.securityContext.runAsUser")
    effective = {}
    for index in targets:
        where = f"spec.containers[{index}].securityContext.runAsUser"
        own = optional_int(view.container_security(index), "runAsUser", where)
        effective[index] = own if own is not None else pod_uid
    chosen = sorted({uid for uid in effective.values() if uid is not None})
    if len(chosen) > 1:
        described = ", ".join(
            f"{view.container_names[i]} as {effective[i]}" for i in targets if effective[i] is not None
        )
        raise WiringError(
            f"wired containers run as different uids ({described}); the modelcar must share one"
            " uid with all of them to expose the model through /proc/<pid>/root"
        )
    uid = chosen[0] if chosen else config.uid_modelcar
    if uid == 0 and _requires_non_root(view, targets):
        raise WiringError(
            "the server runs as uid 0 but the pod requires runAsNonRoot: the modelcar must run as"
            " the server's uid to expose the model; run the server as a non-root uid"
        )
    if uid is None:
        return (
            None,
            [],
            [
                "no uid set (uidModelcar is null and no container sets runAsUser): the modelcar and"
                " server must run as the same uid; relying on the platform to assign one"
            ],
        )
    return uid, [index for index in targets if effective[index] is None], []


def _requires_non_root(view: PodView, targets: list[int]) -> bool:
    if view.pod_security().get("runAsNonRoot") is True:
        return True
    return any(view.container_security(i).get("runAsNonRoot") is True for i in targets)
