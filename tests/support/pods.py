"""Test support: run pods through raw CRI ``runtime.v1``, the way kubelet would, without kubelet.

``CriPods`` talks to a runtime socket with the generated stubs directly (tests must not depend on
the adapter under test). A sandbox uses the node's network namespace (no CNI on test machines)
and, by default, one PID namespace for the whole pod (``shareProcessNamespace: true``). Container
logs are read from the CRI log files under the sandbox's log directory. Every wait polls with a
deadline and fails with what was last seen.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from prefetcher.adapters.cri_api import api_pb2 as cri
from prefetcher.adapters.cri_api import api_pb2_grpc as cri_grpc
from tests.support.polling import eventually

TEST_LABEL = "modelcar-prefetcher.test/pod"
CALL_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Mount:
    """A host directory mounted into a container."""

    host_path: Path
    container_path: str
    readonly: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    """What a test wants run: the fields of a pod spec container that CRI sees."""

    name: str
    image: str
    command: Sequence[str] = ()
    args: Sequence[str] = ()
    run_as_user: int | None = None
    mounts: Sequence[Mount] = ()
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunningContainer:
    """A container created and started in a sandbox."""

    id: str
    name: str
    log_path: Path


def parse_cri_log(text: str) -> str:
    """The output in a CRI log file (``<time> <stream> <P|F> <content>`` per line), joined."""
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3:
            continue
        content = parts[3] if len(parts) == 4 else ""
        out.append(content if parts[2] == "P" else content + "\n")
    return "".join(out)


class Sandbox:
    """A running pod sandbox; containers started in it are removed with it."""

    def __init__(self, pods: CriPods, sandbox_id: str, config: cri.PodSandboxConfig) -> None:
        self.pods = pods
        self.id = sandbox_id
        self.config = config
        self.log_directory = Path(config.log_directory)
        self.containers: dict[str, RunningContainer] = {}

    def start(self, spec: ContainerSpec) -> RunningContainer:
        """Create and start a container from ``spec`` (the image must be present or pullable)."""
        self.pods.ensure_image(spec.image)
        security = cri.LinuxContainerSecurityContext(
            namespace_options=self.config.linux.security_context.namespace_options
        )
        if spec.run_as_user is not None:
            security.run_as_user.value = spec.run_as_user
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=spec.name),
            image=cri.ImageSpec(image=spec.image),
            command=list(spec.command),
            args=list(spec.args),
            envs=[cri.KeyValue(key=k, value=v) for k, v in spec.env.items()],
            mounts=[
                cri.Mount(host_path=str(m.host_path), container_path=m.container_path, readonly=m.readonly)
                for m in spec.mounts
            ],
            labels={TEST_LABEL: self.config.metadata.name},
            log_path=f"{spec.name}/0.log",
            linux=cri.LinuxContainerConfig(security_context=security),
        )
        request = cri.CreateContainerRequest(
            pod_sandbox_id=self.id, config=config, sandbox_config=self.config
        )
        container_id = self.pods.call("CreateContainer", request).container_id
        self.pods.call("StartContainer", cri.StartContainerRequest(container_id=container_id))
        running = RunningContainer(container_id, spec.name, self.log_directory / spec.name / "0.log")
        self.containers[spec.name] = running
        return running

    def status(self, container: RunningContainer) -> cri.ContainerStatus:
        """The runtime's current status of ``container``."""
        request = cri.ContainerStatusRequest(container_id=container.id)
        status: cri.ContainerStatus = self.pods.call("ContainerStatus", request).status
        return status

    def wait_running(self, container: RunningContainer, *, timeout_seconds: float = 30.0) -> None:
        """Poll until ``container`` runs; fail early if it exits instead."""

        def running() -> bool:
            status = self.status(container)
            if status.state == cri.CONTAINER_EXITED:
                raise AssertionError(
                    f"{container.name} exited {status.exit_code} ({status.reason}: {status.message}); "
                    f"log: {self.logs(container)!r}"
                )
            return status.state == cri.CONTAINER_RUNNING

        eventually(running, timeout_seconds=timeout_seconds, what=f"{container.name} to run")

    def wait_exited(self, container: RunningContainer, *, timeout_seconds: float = 30.0) -> int:
        """Poll until ``container`` exits; its exit code."""
        status = eventually(
            lambda: s if (s := self.status(container)).state == cri.CONTAINER_EXITED else None,
            timeout_seconds=timeout_seconds,
            what=f"{container.name} to exit",
        )
        return int(status.exit_code)

    def logs(self, container: RunningContainer) -> str:
        """What ``container`` wrote to stdout and stderr so far."""
        try:
            return parse_cri_log(container.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def exec(
        self, container: RunningContainer, cmd: Sequence[str], *, timeout_seconds: int = 30
    ) -> cri.ExecSyncResponse:
        """Run ``cmd`` in ``container`` and return its output and exit code."""
        request = cri.ExecSyncRequest(container_id=container.id, cmd=list(cmd), timeout=timeout_seconds)
        response: cri.ExecSyncResponse = self.pods.call("ExecSync", request, timeout=timeout_seconds + 10)
        return response


class CriPods:
    """Pod sandboxes and containers over a CRI socket, for tests."""

    def __init__(self, endpoint: str, *, log_root: Path) -> None:
        self.endpoint = endpoint
        self.log_root = Path(log_root)
        self._channel = grpc.insecure_channel(endpoint)
        self._runtime = cri_grpc.RuntimeServiceStub(self._channel)
        self._images = cri_grpc.ImageServiceStub(self._channel)

    def close(self) -> None:
        """Close the gRPC channel."""
        self._channel.close()

    def __enter__(self) -> CriPods:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, method: str, request: Any, *, timeout: float = CALL_TIMEOUT_SECONDS) -> Any:
        """Call a RuntimeService or ImageService method by name, with a deadline."""
        stub = self._images if hasattr(self._images, method) else self._runtime
        return getattr(stub, method)(request, timeout=timeout)

    def ensure_image(self, image: str) -> str:
        """Pull ``image`` unless present (pull policy IfNotPresent); its image id."""
        status = self.call("ImageStatus", cri.ImageStatusRequest(image=cri.ImageSpec(image=image)))
        if status.HasField("image"):
            return str(status.image.id)
        pulled = self.call("PullImage", cri.PullImageRequest(image=cri.ImageSpec(image=image)))
        return str(pulled.image_ref)

    @contextmanager
    def sandbox(self, name: str, *, share_pid: bool = True) -> Iterator[Sandbox]:
        """Run a host-network sandbox (one PID namespace when ``share_pid``); removed on exit."""
        uid = uuid.uuid4().hex
        log_directory = self.log_root / f"{name}_{uid[:8]}"
        log_directory.mkdir(parents=True)
        namespaces = cri.NamespaceOption(
            network=cri.NODE, pid=cri.POD if share_pid else cri.CONTAINER, ipc=cri.POD
        )
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=uid, namespace="test"),
            log_directory=str(log_directory),
            labels={TEST_LABEL: name},
            linux=cri.LinuxPodSandboxConfig(
                security_context=cri.LinuxSandboxSecurityContext(namespace_options=namespaces)
            ),
        )
        sandbox_id = self.call("RunPodSandbox", cri.RunPodSandboxRequest(config=config)).pod_sandbox_id
        try:
            yield Sandbox(self, sandbox_id, config)
        finally:
            self.remove_sandbox(sandbox_id)

    def remove_sandbox(self, sandbox_id: str) -> None:
        """Stop and remove a sandbox and its containers (idempotent, like kubelet's teardown)."""
        self.call("StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        self.call("RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))

    def remove_all(self) -> None:
        """Remove every sandbox and container this runtime knows (test teardown)."""
        for item in self.call("ListPodSandbox", cri.ListPodSandboxRequest()).items:
            with suppress(grpc.RpcError):
                self.remove_sandbox(item.id)
        for container in self.call("ListContainers", cri.ListContainersRequest()).containers:
            with suppress(grpc.RpcError):
                self.call("RemoveContainer", cri.RemoveContainerRequest(container_id=container.id))
