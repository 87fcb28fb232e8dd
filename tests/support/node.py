"""Test support: one real node of the test cluster, and what a test asks of it.

``start_node`` runs a containerd with a loop-mounted ext4 image store and a kubelet registered
under a unique name, then waits until the node is Ready and schedulable. ``NodeCluster`` is what a
test holds: kubectl as the cluster admin, the node's Events, the image filesystem's usage, pod
readiness and logs, and a kubelet restart. Every wait that times out reports the tail of each
daemon's log (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, containerd).

Teardown runs in the order the host needs: kubelet stops, containerd removes the pods and their
processes, the Node object is deleted, kubelet's volume mounts and log links go, then the node's
cgroup root (busy until the container processes have exited) and kubelet's state directory.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tests.support.apiserver import ApiServer, ControlPlaneError
from tests.support.containerd import RunningContainerd, start_containerd
from tests.support.kubelet import Kubelet, KubeletOptions, KubeletPaths, start_kubelet
from tests.support.kubelet_host import cgroup_root, kubelet_state_dir, reap_dead_runs, remove_host_leftovers
from tests.support.mounts import FsUsage
from tests.support.pods import parse_cri_log
from tests.support.polling import eventually

if TYPE_CHECKING:
    from tests.support.cluster import Cluster

NODE_READY_TIMEOUT_SECONDS = 60.0
POD_READY_TIMEOUT_SECONDS = 60.0
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
_T = TypeVar("_T")


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """The status condition ``kind`` of a Node or Pod, or ``{}``."""
    conditions: list[dict[str, Any]] = obj.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kind), {})


@dataclass(frozen=True)
class NodeCluster:
    """One node (containerd + kubelet) of ``cluster``, named ``node_name``."""

    cluster: Cluster
    node_name: str
    containerd: RunningContainerd
    kubelet: Kubelet

    @property
    def apiserver(self) -> ApiServer:
        return self.cluster.apiserver

    @property
    def endpoint(self) -> str:
        """The node's CRI endpoint (its containerd), ``unix://…``."""
        return self.containerd.endpoint

    def kubectl(self, *args: str, input: str | None = None) -> str:
        """kubectl as the cluster admin; stdout. Raises ``ControlPlaneError`` with stderr."""
        return self.apiserver.kubectl(*args, input=input)

    def get(self, *args: str) -> Any:
        """``kubectl get … -o json``, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def node(self) -> dict[str, Any]:
        """The Node object."""
        node: dict[str, Any] = self.get("node", self.node_name)
        return node

    def kubelet_config(self) -> dict[str, Any]:
        """The configuration kubelet runs with, defaults applied (its ``/configz``, as the admin)."""
        pki = self.apiserver.pki.directory
        return self.kubelet.configz((pki / "admin.crt", pki / "admin.key"))

    def image_fs_usage(self) -> FsUsage:
        """``statvfs`` of the image filesystem (the ext4), as kubelet's image GC sees it."""
        return self.containerd.image_fs_usage()

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        """Events about this Node (kubelet's ``ImageGCFailed``, ``FreeDiskSpaceFailed``, …)."""
        selector = f"involvedObject.kind=Node,involvedObject.name={self.node_name}"
        if reason is not None:
            selector += f",reason={reason}"
        items: list[dict[str, Any]] = self.get("events", "-A", f"--field-selector={selector}")["items"]
        return items

    def log_tails(self, lines: int = 30) -> str:
        """The last ``lines`` of every daemon's log, for failure messages."""
        parts = [(d.name, d.log_tail(lines)) for d in self.cluster.daemons()]
        parts += [("kubelet", self.kubelet.log_tail(lines)), ("containerd", self.containerd.log_tail(lines))]
        return "\n".join(f"--- {name} ---\n{tail}" for name, tail in parts)

    def wait_for(
        self, probe: Callable[[], _T | None], *, what: str, timeout_seconds: float = POD_READY_TIMEOUT_SECONDS
    ) -> _T:
        """Poll ``probe`` until it returns a truthy value; on timeout fail with the daemons' logs."""
        try:
            return eventually(probe, timeout_seconds=timeout_seconds, what=what, interval_seconds=0.2)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.log_tails()}") from None

    def wait_ready(self, timeout_seconds: float = NODE_READY_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Wait until the node is Ready and the not-ready taint is gone; the Node object."""

        def ready() -> dict[str, Any] | None:
            node = self.node()
            taints = {t["key"] for t in node["spec"].get("taints", [])}
            ok = condition(node, "Ready").get("status") == "True" and NOT_READY_TAINT not in taints
            return node if ok else None

        return self.wait_for(ready, what=f"node {self.node_name} Ready", timeout_seconds=timeout_seconds)

    def wait_pod_ready(
        self, namespace: str, name: str, timeout_seconds: float = POD_READY_TIMEOUT_SECONDS
    ) -> dict[str, Any]:
        """Wait for the Pod's Ready condition; fail with its status, Events and the daemons' logs."""

        def ready() -> dict[str, Any] | None:
            pod: dict[str, Any] = self.get("pod", "-n", namespace, name)
            return pod if condition(pod, "Ready").get("status") == "True" else None

        try:
            return eventually(ready, timeout_seconds=timeout_seconds, what=f"pod {namespace}/{name} Ready")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.describe_pod(namespace, name)}\n{self.log_tails()}") from None

    def describe_pod(self, namespace: str, name: str) -> str:
        """The Pod's status and its Events, for failure messages."""
        try:
            status = json.dumps(self.get("pod", "-n", namespace, name).get("status", {}), indent=1)
            events = self.get("events", "-n", namespace, f"--field-selector=involvedObject.name={name}")
        except ControlPlaneError as err:
            return f"pod {namespace}/{name}: {err}"
        lines = [f"{e.get('reason')}: {e.get('message')}" for e in events["items"]]
        return f"--- pod {namespace}/{name} status ---\n{status}\n--- events ---\n" + "\n".join(lines)

    def pod_logs(self, namespace: str, name: str, container: str) -> str:
        """What ``container`` wrote, read from kubelet's pod log files (newest restart)."""
        pattern = f"{namespace}_{name}_*/{container}/*.log"
        files = sorted(self.kubelet.paths.pod_logs_dir.glob(pattern), key=lambda p: p.stat().st_mtime)
        return parse_cri_log(files[-1].read_text(errors="replace")) if files else ""

    def restart_kubelet(self) -> None:
        """Restart kubelet with the same node and config; wait until the node is Ready again."""
        self.kubelet.restart()
        self.wait_ready()


@contextmanager
def start_node(
    cluster: Cluster,
    workdir: Path,
    *,
    registry_host: str,
    sandbox_image: str,
    image_fs_mb: int,
    options: KubeletOptions,
) -> Iterator[NodeCluster]:
    """Add a node to ``cluster`` with its files under ``workdir``; it is Ready when yielded."""
    name = f"node-{uuid.uuid4().hex[:10]}"
    apiserver = cluster.apiserver
    kubeconfig = apiserver.write_kubeconfig(f"system:node:{name}", ["system:nodes"])
    reap_dead_runs()
    with ExitStack() as stack:
        paths = KubeletPaths(workdir / "kubelet", stack.enter_context(kubelet_state_dir()))
        cgroups = stack.enter_context(cgroup_root(name))
        stack.callback(remove_host_leftovers, root_dir=paths.root_dir, pod_logs_dir=paths.pod_logs_dir)
        stack.callback(apiserver.kubectl, "delete", "node", name, "--ignore-not-found", "--wait=false")
        containerd = stack.enter_context(
            start_containerd(
                workdir / "ctd",
                registry_host=registry_host,
                sandbox_image=sandbox_image,
                ext4_size_mb=image_fs_mb,
                cni_placeholder=True,
            )
        )
        kubelet = stack.enter_context(
            start_kubelet(
                apiserver.assets_dir,
                paths,
                node_name=name,
                kubeconfig=kubeconfig,
                client_ca_file=apiserver.ca_file,
                runtime_endpoint=containerd.endpoint,
                cgroup_root=cgroups,
                options=options,
            )
        )
        node = NodeCluster(cluster=cluster, node_name=name, containerd=containerd, kubelet=kubelet)
        node.wait_ready()
        yield node
