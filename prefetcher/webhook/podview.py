"""A checked, read-only view of the parts of a pod the webhook reads. Pure.

The API server only sends well-formed pods, but the handler must never crash on anything it is
sent, so every shape is checked here once and a malformed pod becomes a ``WiringError``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def canonical_path(path: Any) -> str:
    """The directory a container runtime mounts at for ``path``: absolute, normalized, no ``//``.

    POSIX keeps a leading ``//`` (``normpath("//mnt")`` is ``//mnt``), but runtimes mount it at
    ``/mnt``; compared raw, it would slip past the conflict check.
    """
    return posixpath.normpath("/" + str(path or "").lstrip("/"))


class WiringError(Exception):
    """The pod cannot be wired; the message says why and becomes the denial."""


def mapping(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """``parent[key]`` as an object, ``{}`` when absent or null."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise WiringError(f"malformed pod: {where} is not an object")
    return value


def items(parent: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    """``parent[key]`` as a list of objects, ``[]`` when absent or null."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise WiringError(f"malformed pod: {where} is not a list of objects")
    return value


def optional_int(parent: Mapping[str, Any], key: str, where: str) -> int | None:
    """``parent[key]`` as an integer, None when absent."""
    value = parent.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise WiringError(f"malformed pod: {where} is not an integer")
    return value


@dataclass(frozen=True)
class PodView:
    """The pod spec with its containers, init containers and volumes checked."""

    spec: Mapping[str, Any]
    containers: tuple[Mapping[str, Any], ...]
    init_containers: tuple[Mapping[str, Any], ...]
    volumes: tuple[Mapping[str, Any], ...]

    @classmethod
    def read(cls, pod: Mapping[str, Any]) -> PodView:
        """Check and view ``pod``; raises ``WiringError`` on a malformed pod."""
        spec = mapping(pod, "spec", "spec")
        containers = tuple(items(spec, "containers", "spec.containers"))
        init_containers = tuple(items(spec, "initContainers", "spec.initContainers"))
        for index, container in enumerate(containers + init_containers):
            if not isinstance(container.get("name"), str):
                raise WiringError(f"malformed pod: container #{index} has no name")
        for index, container in enumerate(containers):
            where = f"spec.containers[{index}]"
            for number, entry in enumerate(items(container, "env", f"{where}.env")):
                if not isinstance(entry.get("name"), str):
                    raise WiringError(f"malformed pod: {where}.env[{number}].name is not a string")
            items(container, "volumeMounts", f"{where}.volumeMounts")
            mapping(container, "securityContext", f"{where}.securityContext")
        volumes = tuple(items(spec, "volumes", "spec.volumes"))
        mapping(spec, "securityContext", "spec.securityContext")
        return cls(spec, containers, init_containers, volumes)

    @property
    def container_names(self) -> list[str]:
        """Names of the regular containers, in order."""
        return [str(container["name"]) for container in self.containers]

    @property
    def all_names(self) -> set[str]:
        """Names of every container, init containers included."""
        return {str(c["name"]) for c in self.containers + self.init_containers}

    def volume(self, name: str) -> Mapping[str, Any] | None:
        """The pod volume called ``name``, if any."""
        return next((v for v in self.volumes if v.get("name") == name), None)

    def pod_security(self) -> Mapping[str, Any]:
        """The pod-level security context."""
        return mapping(self.spec, "securityContext", "spec.securityContext")

    def container_security(self, index: int) -> Mapping[str, Any]:
        """The security context of regular container ``index``."""
        return mapping(self.containers[index], "securityContext", "securityContext")

    def mounts(self, index: int) -> list[Mapping[str, Any]]:
        """The volume mounts of regular container ``index``."""
        return items(self.containers[index], "volumeMounts", "volumeMounts")

    def env(self, index: int) -> list[Mapping[str, Any]]:
        """The env entries of regular container ``index``."""
        return items(self.containers[index], "env", "env")
