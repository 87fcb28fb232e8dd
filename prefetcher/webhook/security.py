"""Which uid and gid the modelcar and the servers share. Pure.

The server reads the model through ``/proc/<modelcar pid>/root``, which the kernel only opens to
a process whose uid *and* gid equal the target's (ptrace "read" access without CAP_SYS_PTRACE),
so every wired container and the modelcar must run as one uid and one gid.

KServe overwrites the server's security context with ``uidModelcar`` and leaves the group to the
images (gid 0 for a uid absent from an image's /etc/passwd, as with 1010). Here a uid the pod
already chose (its own, or one a platform such as OpenShift assigned) is kept and shared with the
modelcar, ``uidModelcar`` only fills the gap; an explicit ``runAsGroup`` is shared the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefetcher.webhook.config import WebhookConfig
from prefetcher.webhook.podview import PodView, WiringError, optional_int


@dataclass(frozen=True)
class Identity:
    """The modelcar's uid and gid (None: not set), the wired containers to give them, warnings."""

    uid: int | None
    gid: int | None
    set_uid_on: tuple[int, ...] = ()
    set_gid_on: tuple[int, ...] = ()
    warnings: tuple[str, ...] = ()


def plan_identity(view: PodView, targets: list[int], config: WebhookConfig) -> Identity:
    """The identity the modelcar shares with the wired containers; denies when none can be shared."""
    uids = _effective(view, targets, "runAsUser")
    gids = _effective(view, targets, "runAsGroup")
    chosen_uid, chosen_gid = _one(view, targets, uids, "uid"), _one(view, targets, gids, "gid")
    uid = chosen_uid if chosen_uid is not None else config.uid_modelcar
    if uid == 0 and _requires_non_root(view, targets):
        raise WiringError(
            "the server runs as uid 0 but the pod requires runAsNonRoot: the modelcar must run as"
            " the server's uid to expose the model; run the server as a non-root uid"
        )
    warnings = []
    if uid is None:
        warnings.append(
            "no uid set (uidModelcar is null and no container sets runAsUser): the modelcar and"
            " server must run as the same uid; relying on the platform to assign one"
        )
    elif chosen_uid is not None and chosen_gid is None:
        warnings.append(
            f"the server keeps its uid {uid} but sets no runAsGroup: if its image gives that uid a"
            " group other than 0, the modelcar's differs and the model link is unreadable; set"
            " runAsGroup on the pod"
        )
    return Identity(
        uid=uid,
        gid=chosen_gid,
        set_uid_on=tuple(i for i in targets if uids[i] is None) if uid is not None else (),
        set_gid_on=tuple(i for i in targets if gids[i] is None) if chosen_gid is not None else (),
        warnings=tuple(warnings),
    )


def _effective(view: PodView, targets: list[int], field: str) -> dict[int, int | None]:
    pod_value = optional_int(view.pod_security(), field, f"spec.securityContext.{field}")
    effective = {}
    for index in targets:
        where = f"spec.containers[{index}].securityContext.{field}"
        own = optional_int(view.container_security(index), field, where)
        effective[index] = own if own is not None else pod_value
    return effective


def _one(view: PodView, targets: list[int], effective: dict[int, int | None], what: str) -> int | None:
    chosen = sorted({value for value in effective.values() if value is not None})
    if len(chosen) > 1:
        described = ", ".join(
            f"{view.container_names[i]} as {effective[i]}" for i in targets if effective[i] is not None
        )
        raise WiringError(
            f"wired containers run as different {what}s ({described}); the modelcar must share one"
            f" {what} with all of them to expose the model through /proc/<pid>/root"
        )
    return chosen[0] if chosen else None


def _requires_non_root(view: PodView, targets: list[int]) -> bool:
    if view.pod_security().get("runAsNonRoot") is True:
        return True
    return any(view.container_security(i).get("runAsNonRoot") is True for i in targets)
